"""Train the iris classifier and write a version folder: python train.py BASE_PATH/1"""

import shutil
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def write_version(version_dir: str) -> None:
    folder = Path(version_dir)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), folder / "model.joblib")
    shutil.copy(Path(__file__).with_name("model.py"), folder / "model.py")


if __name__ == "__main__":
    write_version(sys.argv[1])
