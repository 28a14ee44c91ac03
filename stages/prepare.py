"""DVC stage `prepare`: validate every example and write Parquet shards with Ray Data."""

from pipeline.data.acquire import voc_root
from pipeline.data.prepare import prepare_split
from pipeline.data.voc import VOC
from pipeline.params import load_params, repo_root
from pipeline.raycluster import init_ray

if __name__ == "__main__":
    params = load_params()
    name = params.get("data.dataset")
    root = voc_root(repo_root() / "data" / "raw" / name)
    init_ray(params)
    for split_key in ("train_split", "val_split"):
        split = params.get(f"data.{split_key}")
        out = repo_root() / "data" / "prepared" / name / split_key.removesuffix("_split")
        n = prepare_split(VOC(), root, split, out)
        print(f"{name}/{split}: {n} examples -> {out}")
