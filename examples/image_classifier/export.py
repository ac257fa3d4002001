"""Write a version folder: a small Keras CNN (untrained weights, fixed seed) exported as a
SavedModel, this folder's model.py and labels.txt.   python export.py BASE_PATH/1"""

import shutil
import sys
from pathlib import Path

import tensorflow as tf

LABELS = ["cat", "dog", "bird", "fish"]


def write_version(version_dir: str) -> None:
    folder = Path(version_dir)
    tf.keras.utils.set_random_seed(7)
    network = tf.keras.Sequential([
        tf.keras.Input((64, 64, 3)),
        tf.keras.layers.Conv2D(8, 3, activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(len(LABELS), activation="softmax"),
    ])

    @tf.function(input_signature=[tf.TensorSpec([None, 64, 64, 3], tf.float32, name="pixels")])
    def serve(pixels):
        return {"probabilities": network(pixels)}

    module = tf.Module()
    module.network, module.serve = network, serve
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})
    here = Path(__file__).parent
    shutil.copy(here / "model.py", folder / "model.py")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")


if __name__ == "__main__":
    write_version(sys.argv[1])
