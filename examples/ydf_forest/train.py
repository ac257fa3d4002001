"""Train a gradient-boosted forest with YDF and write a version folder: python train.py BASE_PATH/1

YDF is the library TensorFlow Decision Forests runs on; served as a Python model, a forest needs
no TF-DF build matching the server's TensorFlow. The data: who renews a subscription, from age
and country (made up, with a rule the forest finds).
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import ydf


def training_data(rows: int = 600) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    age = rng.uniform(18, 80, rows).astype(np.float32)
    country = rng.choice(["fr", "de", "us", "jp"], rows)
    renews = ((age > 40) ^ (country == "jp")) ^ (rng.uniform(size=rows) < 0.05)
    return {"age": age, "country": country, "renews": renews.astype(np.int64)}


def write_version(version_dir: str) -> None:
    folder = Path(version_dir)
    folder.mkdir(parents=True, exist_ok=True)
    forest = ydf.GradientBoostedTreesLearner(label="renews", num_trees=50).train(training_data())
    forest.save(str(folder / "forest"))
    shutil.copy(Path(__file__).with_name("model.py"), folder / "model.py")


if __name__ == "__main__":
    write_version(sys.argv[1])
