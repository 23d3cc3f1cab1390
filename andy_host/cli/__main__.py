from andy_host.cli import main

main()
