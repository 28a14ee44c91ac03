"""DVC stage `download`: materialise the raw dataset (built-in, downloaded or local)."""

from pipeline.data.acquire import acquire_voc
from pipeline.params import load_params, repo_root

if __name__ == "__main__":
    params = load_params()
    root = acquire_voc(params, repo_root() / "data" / "raw" / params.get("data.dataset"))
    print(f"dataset ready at {root}")
