from andy_host.modelnames import canonical, resolve, served_name


def test_canonical_adds_latest_and_lowercases() -> None:
    assert canonical("Andy-4") == "andy-4:latest"
    assert canonical("sweaterdog/andy-4:q8") == "sweaterdog/andy-4:q8"
    assert canonical("host:5000/ns/model") == "host:5000/ns/model:latest"


def test_short_name_resolves_only_when_unambiguous() -> None:
    served = ["sweaterdog/andy-4:latest", "llama3.2:latest", "a/dup:latest", "b/dup:latest"]
    assert resolve("andy-4", served) == "sweaterdog/andy-4:latest"
    assert resolve("sweaterdog/andy-4", served) == "sweaterdog/andy-4:latest"
    assert resolve("llama3.2:latest", served) == "llama3.2:latest"
    assert resolve("dup", served) is None
    assert resolve("andy-4:q8", served) is None


def test_served_name_from_gguf_path() -> None:
    assert served_name("/models/gemma-3-270m-Q4_K_M.gguf") == "gemma-3-270m-q4_k_m:latest"
    assert served_name("gemma3-270m") == "gemma3-270m:latest"
