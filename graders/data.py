"""Course datasets: built offline, deterministically, from a fixed seed.

This module owns every file the lessons read. ``prepare()`` writes them into
``<root>/<size>/``; running it again is a no-op once ``MANIFEST.json`` exists.

Where the data lives
    root   ``$COURSE_DATA`` if set, else ``<repo>/data`` (or
           ``~/.ray-data-course/data`` outside the repo). May be ``s3://bucket/prefix``:
           all reads and writes go through ``pyarrow.fs``.
    size   ``$COURSE_SIZE``: ``small`` (default) or ``full``.
    inputs ``$COURSE_INPUTS``: set only by the grader, its fresh copy of the measured run's datasets.
    outputs ``output_path(name)``: your own, never another learner's: ``<workspace>/outputs/<size>/``
           in your workspace, else ``<root>/<size>/outputs/<user>/``.

Layout of ``<root>/<size>/``
    images/             ``{product_id}_{source}_{variant:03d}.jpg|png``
                        real photos from ``skimage.data`` (random crop of 60-100 % of
                        the area, random horizontal flip, longer side 160-320 px, RGB
                        JPEG quality 90) and real handwritten digits from scikit-learn
                        (8x8 upscaled to 32x32, greyscale PNG; source ``digit{label}``)
    support/            ``{ticket_id}_{product_id}.txt``: one SYNTHETIC message per file,
                        one line, generated from templates (see ``support/NOTICE.md``)
    reviews/            ``part-000.parquet`` ...: SYNTHETIC product reviews, review_id,
                        product_id, rating (1-5), text. The raw text is messy on purpose
                        (HTML tags and entities, stray whitespace); every 32nd review
                        (review ``R…032``, ``R…064``, …) has no words once cleaned
    products.parquet    product_id, name, category, price, created   (synthetic)
    customers.parquet   customer_id, region, segment, signup_date,
                        lifetime_value, orders                       (synthetic)
    MANIFEST.json       written last: its presence marks a complete build

Exact counts (validations assert these)

    ======  ======  ======  ======  ========  =========  ========  =======  ============  ======
    size    images  photos  digits  products  customers  messages  reviews  reviews_kept  parts
    ======  ======  ======  ======  ========  =========  ========  =======  ============  ======
    small       96      48      48        48        200       240     1,920         1,860      16
    full     9,600   4,800   4,800     4,800     20,000    24,000   192,000       186,000     160
    ======  ======  ======  ======  ========  =========  ========  =======  ============  ======

``reviews_kept`` counts the reviews with words left after ``clean_review_text``.

Images ``0 .. products-1`` are photos, the rest are digits; image ``i`` belongs to
product ``P{(i % products) + 1:06d}``, so every product has one photo and one digit.
Photo sources rotate through ``PHOTO_SOURCES`` so each appears. A product's category
comes from its photo's source. The full size reuses the 1,797 bundled digits.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import random
import re
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from graders.workspace import MANIFEST

SEED = 2026
_VERSION = 2


@dataclass(frozen=True)
class Counts:
    images: int
    photos: int
    digits: int
    products: int
    customers: int
    messages: int
    reviews: int
    reviews_kept: int  # reviews with words left after clean_review_text (every 32nd has none)
    review_parts: int  # Parquet files under reviews/


SIZES: dict[str, Counts] = {
    "small": Counts(images=96, photos=48, digits=48, products=48, customers=200, messages=240,
                    reviews=1_920, reviews_kept=1_860, review_parts=16),
    "full": Counts(images=9_600, photos=4_800, digits=4_800, products=4_800, customers=20_000, messages=24_000,
                   reviews=192_000, reviews_kept=186_000, review_parts=160),
}

# Photo source -> (skimage.data loader name, product category). All are bundled with
# scikit-image and load without a network connection.
_PHOTOS: dict[str, tuple[str, str]] = {
    "chelsea": ("chelsea", "pets"),
    "coffee": ("coffee", "kitchen"),
    "rocket": ("rocket", "outdoor"),
    "astronaut": ("astronaut", "apparel"),
    "camera": ("camera", "electronics"),
    "coins": ("coins", "collectibles"),
    "moon": ("moon", "posters"),
    "hubble": ("hubble_deep_field", "posters"),
    "page": ("page", "books"),
    "text": ("text", "books"),
    "clock": ("clock", "home"),
    "motorcycle": ("stereo_motorcycle", "automotive"),
    "brick": ("brick", "diy"),
    "grass": ("grass", "garden"),
}
PHOTO_SOURCES: list[str] = list(_PHOTOS)
_DIGIT_CATEGORY = "stationery"

_IMAGE_RE = re.compile(r"^(P\d{6})_([a-z]+\d?)_(\d{3})\.(jpg|png)$")
_SUPPORT_RE = re.compile(r"^(T\d{6})_(P\d{6})\.txt$")
_IMAGE_PATTERN = "P000017_chelsea_003.jpg (P<6 digits>_<source>_<3 digits>.jpg|png)"
_SUPPORT_PATTERN = "T000001_P000017.txt (T<6 digits>_P<6 digits>.txt)"


@dataclass(frozen=True)
class DataPaths:
    root: str
    size: str
    images: str
    support: str
    reviews: str
    products: str
    customers: str
    manifest: str


# ---------------------------------------------------------------- configuration


def data_root() -> str:
    """``$COURSE_DATA``, else ``<repo>/data``, else ``~/.ray-data-course/data``."""
    root = os.environ.get("COURSE_DATA")
    if not root:
        repo = Path(__file__).resolve().parents[1]
        in_repo = (repo / "pyproject.toml").exists()
        root = str(repo / "data" if in_repo else Path.home() / ".ray-data-course" / "data")
    return _absolute(root)


def _absolute(root: str) -> str:
    if "://" in root:
        path, sep, query = root.partition("?")
        return path.rstrip("/") + sep + query
    return str(Path(root).expanduser().resolve())


def _check_size(size: str, where: str) -> str:
    if size not in SIZES:
        raise ValueError(
            f"{where} must be one of {', '.join(map(repr, SIZES))}, but found {size!r}. "
            f"Try: export COURSE_SIZE=small (or pass size='small')."
        )
    return size


def current_size() -> str:
    """The dataset size from ``$COURSE_SIZE`` (default ``small``), validated."""
    return _check_size(os.environ.get("COURSE_SIZE", "small"), "COURSE_SIZE")


def counts(size: str | None = None) -> Counts:
    return SIZES[current_size() if size is None else _check_size(size, "size")]


def paths(size: str | None = None, root: str | None = None) -> DataPaths:
    """Where each dataset is. While a notebook is graded, the measured run's datasets are the
    grader's fresh copy in ``$COURSE_INPUTS`` (see ``graders/trusted/inputs.py``)."""
    size = current_size() if size is None else _check_size(size, "size")
    base = _join(_absolute(root) if root else data_root(), size)
    fresh = os.environ.get("COURSE_INPUTS") if root is None and size == current_size() else None

    def where(name: str) -> str:
        return str(Path(fresh) / name) if fresh and (Path(fresh) / name).is_dir() else _join(base, name)

    return DataPaths(
        root=base,
        size=size,
        images=where("images"),
        support=_join(base, "support"),
        reviews=where("reviews"),
        products=_join(base, "products.parquet"),
        customers=_join(base, "customers.parquet"),
        manifest=_join(base, "MANIFEST.json"),
    )


def output_path(name: str, size: str | None = None, root: str | None = None) -> str:
    """Where a lesson writes its results (a local path or a URI), never shared with another learner:

    - ``$COURSE_OUTPUTS/<name>`` while a notebook is graded: the class grader gives each run its own;
    - ``<workspace>/outputs/<size>/<name>`` in your workspace (see ``workspace_root``): every notebook
      of yours, whatever phase folder it is in, reads what the others wrote (Lesson 3.1's model);
    - else ``<root>/<size>/outputs/<user>/<name>``, a folder per login name: outside a workspace
      (the repository's ``solutions/``, a script), and always when the data is in object storage
      (``s3://...``), where every node of a cluster can reach it.

    An explicit ``root`` gives ``<root>/<size>/outputs/<name>`` as it is: no user, no workspace, no
    ``$COURSE_OUTPUTS`` (for tools and tests that choose their own folder)."""
    if root is not None:
        return _join(paths(size, root).root, f"outputs/{name}")
    if os.environ.get("COURSE_OUTPUTS"):
        return _join(os.environ["COURSE_OUTPUTS"], name)
    where = paths(size)
    workspace = None if "://" in where.root else workspace_root()
    if workspace:
        return str(workspace / "outputs" / where.size / name)
    return _join(where.root, f"outputs/{_user()}/{name}")


def workspace_root(start: str | Path | None = None) -> Path | None:
    """The learner's workspace holding `start` (default: the current folder, where a notebook runs):
    the nearest folder upwards with the ``.course-manifest.json`` that ``course workspace`` writes
    at its root. None outside a workspace."""
    here = Path(start or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if (folder / MANIFEST).is_file()), None)


def _user() -> str:
    """Your login name, safe in a path or a URI."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # a container user with no name
        name = f"uid{os.getuid()}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def run_outputs(local: str, name: str) -> str:
    """Where one graded run writes its outputs (the class grader's ``$COURSE_OUTPUTS``): ``local``,
    a folder of its own; or, when the course data lives in object storage, a prefix of its own
    beside it, ``<root>/<size>/outputs/graded/<name>``: a cluster's nodes all read the data there,
    and need not share the grading machine's disk (Ray Train's workers write their checkpoints,
    and Ray Data's write tasks their files, where the run says, on whichever node they run)."""
    root = data_root()
    return _join(paths(root=root).root, f"outputs/graded/{name}") if "://" in root else local


def remove_outputs(path: str) -> None:
    """Delete what a graded run wrote under `path` in object storage (local folders go with the run's own)."""
    if "://" in path:
        fs, base = filesystem(path)
        if fs.get_file_info(base).type == pafs.FileType.Directory:
            fs.delete_dir(base)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow file system, path inside it) for a local path or a URI such as s3://...?endpoint_override=..."""
    return pafs.FileSystem.from_uri(_absolute(path))


def _join(base: str, name: str) -> str:
    """Join a name onto a local path or a URI; a URI's query (``?endpoint_override=...``) stays last."""
    if "://" not in base:
        return str(Path(base) / name)
    path, sep, query = base.partition("?")
    return f"{path.rstrip('/')}/{name}{sep}{query}"


# ---------------------------------------------------------------- file-name helpers


def _basename(path: str) -> str:
    return re.split(r"[/\\]", str(path).rstrip("/\\"))[-1]


def _match(path: str, regex: re.Pattern[str], pattern: str) -> re.Match[str]:
    m = regex.match(_basename(path))
    if m is None:
        raise ValueError(f"expected a file name like {pattern}, but found {path!r}")
    return m


def product_id_from_path(path: str) -> str:
    """``…/P000017_chelsea_003.jpg`` or ``…/T000001_P000017.txt`` -> ``"P000017"``."""
    name = _basename(path)
    if m := _SUPPORT_RE.match(name):
        return m.group(2)
    if m := _IMAGE_RE.match(name):
        return m.group(1)
    raise ValueError(f"expected a file name like {_IMAGE_PATTERN} or {_SUPPORT_PATTERN}, but found {path!r}")


def ticket_id_from_path(path: str) -> str:
    """``…/T000001_P000017.txt`` -> ``"T000001"``."""
    return _match(path, _SUPPORT_RE, _SUPPORT_PATTERN).group(1)


def image_source_from_path(path: str) -> str:
    """``…/P000017_chelsea_003.jpg`` -> ``"chelsea"``; digits give ``"digit7"``."""
    return _match(path, _IMAGE_RE, _IMAGE_PATTERN).group(2)


# ---------------------------------------------------------------- build


def prepare(size: str | None = None, root: str | None = None, force: bool = False) -> DataPaths:
    """Build the datasets for ``size`` under ``root`` (defaults: env vars) and return their paths.

    Returns at once if a complete build (same version and counts) is already there;
    ``force=True`` deletes ``<root>/<size>/`` and rebuilds it.
    """
    p = paths(size, root)
    c = SIZES[p.size]
    fs, base = pafs.FileSystem.from_uri(p.root)
    if not force and _manifest_matches(fs, f"{base}/MANIFEST.json", c):
        return p

    fs.create_dir(base, recursive=True)
    fs.delete_dir_contents(base, missing_dir_ok=True)  # also removes a stale manifest
    for sub in ("images", "support", "reviews"):
        fs.create_dir(f"{base}/{sub}", recursive=True)

    products = _products(c)
    _write_images(fs, f"{base}/images", c)
    _write_support(fs, f"{base}/support", c, products)
    _write_reviews(fs, f"{base}/reviews", c, products)
    pq.write_table(products, f"{base}/products.parquet", filesystem=fs)
    pq.write_table(_customers(c), f"{base}/customers.parquet", filesystem=fs)
    _write(fs, f"{base}/MANIFEST.json", json.dumps(_manifest(p.size, c), indent=2, sort_keys=True).encode() + b"\n")
    return p


def _write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def _manifest_matches(fs: pafs.FileSystem, path: str, c: Counts) -> bool:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    with fs.open_input_stream(path) as f:
        try:
            m = json.loads(f.read())
        except ValueError:
            return False
    return m.get("version") == _VERSION and m.get("counts") == asdict(c)


def _manifest(size: str, c: Counts) -> dict:
    digits = [f"digit{d}" for d in range(10)]
    return {
        "version": _VERSION,
        "seed": SEED,
        "size": size,
        "counts": asdict(c),
        "generated": {
            "synthetic": {
                "support": "template-generated messages, random.Random(seed); no real customer data",
                "reviews": "template-generated reviews, random.Random(seed); rating follows the wording",
                "products.parquet": "generated from the seed",
                "customers.parquet": "generated from the seed",
            },
            "real": {
                "images": "real photos from scikit-image (skimage.data) and real handwritten digits "
                "from scikit-learn (load_digits); randomly cropped, flipped and resized",
                "photo_sources": PHOTO_SOURCES,
                "digit_sources": digits,
            },
        },
        "image_sources": PHOTO_SOURCES + digits,
    }


# ---- images


def _load_photos() -> dict[str, Image.Image]:
    """Each photo source as a PIL RGB image (loaded once per build)."""
    import skimage.data
    photos = {}
    for source, (loader, _) in _PHOTOS.items():
        arr = getattr(skimage.data, loader)()
        if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
            arr = arr[0]
        photos[source] = Image.fromarray(np.asarray(arr, dtype=np.uint8)).convert("RGB")
    return photos


def _photo_jpeg(img: Image.Image, k: int) -> bytes:
    """Photo ``k``: crop 60-100 % of the area, maybe flip, longer side 160-320 px."""
    rng = np.random.default_rng([SEED, k])
    w, h = img.size
    scale = float(np.sqrt(rng.uniform(0.6, 1.0)))
    cw, ch = round(w * scale), round(h * scale)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    longer = int(rng.integers(160, 321))
    ratio = longer / max(cw, ch)
    out = out.resize((max(1, round(cw * ratio)), max(1, round(ch * ratio))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=90, subsampling="4:2:0", optimize=False)
    return buf.getvalue()


def _digit_png(pixels: np.ndarray) -> bytes:
    """An 8x8 digit (values 0-16) as a 32x32 greyscale PNG."""
    img = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    img.resize((32, 32), Image.Resampling.BILINEAR).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _product_id(i: int, c: Counts) -> str:
    return f"P{(i % c.products) + 1:06d}"


def _write_images(fs: pafs.FileSystem, folder: str, c: Counts) -> None:
    from sklearn.datasets import load_digits

    photos = _load_photos()
    for k in range(c.photos):  # image i = k
        source = PHOTO_SOURCES[k % len(PHOTO_SOURCES)]
        name = f"{_product_id(k, c)}_{source}_{k // len(PHOTO_SOURCES):03d}.jpg"
        _write(fs, f"{folder}/{name}", _photo_jpeg(photos[source], k))

    digits = load_digits()
    seen: dict[int, int] = {}
    for j in range(c.digits):  # image i = photos + j
        sample = j % len(digits.target)
        label = int(digits.target[sample])
        variant = seen[label] = seen.get(label, -1) + 1
        name = f"{_product_id(c.photos + j, c)}_digit{label}_{variant:03d}.png"
        _write(fs, f"{folder}/{name}", _digit_png(digits.images[sample]))


# ---- tables

_ADJECTIVES = ["Classic", "Compact", "Deluxe", "Everyday", "Premium", "Eco", "Pro", "Mini"]
_NOUNS = {
    "pets": ["Cat Bed", "Scratching Post", "Pet Bowl", "Feather Toy", "Travel Carrier"],
    "kitchen": ["Coffee Grinder", "Espresso Cup Set", "Pour-Over Kettle", "Milk Frother", "French Press"],
    "outdoor": ["Model Rocket Kit", "Trail Backpack", "Camping Lantern", "Folding Chair"],
    "apparel": ["Flight Jacket", "Space T-Shirt", "Patch Cap", "Thermal Socks"],
    "electronics": ["Compact Camera", "Tripod", "Camera Strap", "Lens Kit"],
    "collectibles": ["Coin Album", "Display Case", "Commemorative Coin Set"],
    "posters": ["Moon Poster", "Deep Field Print", "Star Chart"],
    "books": ["Notebook", "Paperback Novel", "Bookmark Set"],
    "home": ["Wall Clock", "Desk Clock", "Alarm Clock"],
    "automotive": ["Motorcycle Helmet", "Riding Gloves", "Chain Lube"],
    "diy": ["Brick Sealer", "Trowel Set", "Mortar Mix"],
    "garden": ["Lawn Seed Mix", "Garden Rake", "Sprinkler"],
    _DIGIT_CATEGORY: ["Number Stencils", "Graph Paper Pad", "Flash Cards"],
}


def _products(c: Counts) -> pa.Table:
    rng = random.Random(SEED)
    start = date(2022, 1, 1)
    ids, names, categories, prices, created = [], [], [], [], []
    for p in range(c.products):  # product p's first image is photo p
        category = _PHOTOS[PHOTO_SOURCES[p % len(PHOTO_SOURCES)]][1]
        ids.append(f"P{p + 1:06d}")
        categories.append(category)
        names.append(f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS[category])}")
        prices.append(round(rng.uniform(4.0, 250.0), 2))
        created.append(start + timedelta(days=rng.randrange(3 * 365)))
    return pa.table(
        {
            "product_id": pa.array(ids, pa.string()),
            "name": pa.array(names, pa.string()),
            "category": pa.array(categories, pa.string()),
            "price": pa.array(prices, pa.float64()),
            "created": pa.array(created, pa.date32()),
        }
    )


def _customers(c: Counts) -> pa.Table:
    rng = np.random.default_rng([SEED, 1])
    n = c.customers
    regions = np.array(["Africa", "Asia", "Europe", "North America", "Oceania", "South America"])
    segments = np.array(["consumer", "small_business", "enterprise"])
    orders = rng.poisson(6, n) + 1
    signup = np.datetime64("2019-01-01") + rng.integers(0, 6 * 365, n).astype("timedelta64[D]")
    value = np.round(orders * rng.lognormal(3.5, 0.6, n), 2)
    return pa.table(
        {
            "customer_id": pa.array([f"C{i + 1:06d}" for i in range(n)], pa.string()),
            "region": pa.array(rng.choice(regions, n, p=[0.1, 0.3, 0.25, 0.2, 0.05, 0.1]).tolist(), pa.string()),
            "segment": pa.array(rng.choice(segments, n, p=[0.7, 0.2, 0.1]).tolist(), pa.string()),
            "signup_date": pa.array(signup, pa.date32()),
            "lifetime_value": pa.array(value, pa.float64()),
            "orders": pa.array(orders, pa.int64()),
        }
    )


# ---- support messages (synthetic)

_GREETINGS = ["Hi,", "Hello team,", "Hi there,", "Good morning,", "Dear support,", "Hey,"]
_INTROS = [
    "I bought the {name} from your {category} range last {when}.",
    "I am writing about my {name} ({category}).",
    "Order for the {name} in {category}.",
    "My {name} from the {category} section arrived last {when}.",
]
_WHEN = ["week", "month", "Tuesday", "weekend"]
_ISSUES = [
    "it arrived with a cracked corner",
    "the package was missing the manual",
    "it stopped working after two days",
    "I was charged twice for it",
    "the delivery is three weeks late",
    "the colour does not match the photo on the website",
    "I would like to exchange it for a different size",
    "the tracking link does not work",
    "one of the parts is missing",
]
_SENTIMENTS = [
    "Overall I really love it and would happily buy again.",
    "Your team has always been great, thank you!",
    "Apart from this it is excellent.",
    "Honestly this is very disappointing and frustrating.",
    "This is the worst experience I have had with your shop.",
    "I am quite unhappy about this.",
    "Please let me know the next steps.",
    "I am not sure what to do next.",
]
_DETAILS = [
    "I have attached my order number.",
    "I already tried restarting it twice.",
    "My neighbour had the same issue last month.",
    "I checked the FAQ but could not find an answer.",
    "I am available by phone most afternoons.",
    "The box itself looked fine when it arrived.",
]
_SIGNOFFS = ["Thanks, {first}", "Best regards, {first}", "Cheers, {first}", "Thank you.", "Regards."]
_FIRST_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena"]


def _message(rng: random.Random, name: str, category: str) -> str:
    parts = [
        rng.choice(_GREETINGS),
        rng.choice(_INTROS).format(name=name, category=category, when=rng.choice(_WHEN)),
        f"{rng.choice(['Unfortunately', 'Sadly', 'The problem is that'])} {rng.choice(_ISSUES)}.",
        rng.choice(_SENTIMENTS),
        *rng.sample(_DETAILS, rng.randrange(3)),
        rng.choice(_SIGNOFFS).format(first=rng.choice(_FIRST_NAMES)),
    ]
    return " ".join(parts) + "\n"


_NOTICE = """# Support messages are synthetic

Every `*.txt` file in this folder is a **generated** support message, one line per
file, named `{{ticket_id}}_{{product_id}}.txt`.

- Generated from fixed templates by `graders/data.py` with `random.Random({seed})`.
- Deterministic: the same seed always produces the same messages, byte for byte.
- They contain **no real customer data**; names, products and issues are made up.
"""


def _write_support(fs: pafs.FileSystem, folder: str, c: Counts, products: pa.Table) -> None:
    rng = random.Random(SEED)
    names = products.column("name").to_pylist()
    categories = products.column("category").to_pylist()
    for t in range(c.messages):
        p = rng.randrange(c.products)
        text = _message(rng, names[p], categories[p])
        _write(fs, f"{folder}/T{t + 1:06d}_P{p + 1:06d}.txt", text.encode())
    _write(fs, f"{folder}/NOTICE.md", _NOTICE.format(seed=SEED).encode())


# ---- product reviews (synthetic, messy on purpose: lesson 2.2 cleans them)

_REVIEW_OPENERS = {
    5: ["Absolutely love this {name}.", "Best {category} purchase I have made.", "Five stars for the {name}!"],
    4: ["Really good {name}.", "Happy with this {name} overall.", "Solid {category} product."],
    3: ["The {name} is okay.", "Mixed feelings about this {name}.", "Average {category} item."],
    2: ["Disappointed with the {name}.", "Not great for {category}.", "The {name} let me down."],
    1: ["Terrible {name}.", "Worst {category} purchase ever.", "Do not buy this {name}."],
}
_REVIEW_BODIES = {
    5: ["It works perfectly and feels well made.", "Quality is excellent and it arrived early.",
        "Exceeded my expectations in every way."],
    4: ["It does the job well, with one small flaw.", "Good value for the price.",
        "Works as described, delivery was quick."],
    3: ["Some parts are fine, others feel cheap.", "It works, but nothing special.",
        "Does what it says, barely."],
    2: ["It broke after a few uses.", "The finish is poor and it feels flimsy.",
        "Customer service was slow to help."],
    1: ["It arrived broken and support never answered.", "Completely useless, a waste of money.",
        "It fell apart on the first day."],
}
_REVIEW_CLOSERS = ["Would {verb} recommend.", "{Verb} buy again.", "", "Thanks &amp; regards.", "See photos<br>attached."]
_TAG_RE = re.compile(r"<[^>]+>")


def clean_review_text(text: str) -> str:
    """Raw review text -> plain text: HTML tags become spaces, entities decoded, whitespace collapsed."""
    import html

    return " ".join(html.unescape(_TAG_RE.sub(" ", text or "")).split())


def read_parquet_folder(path: str) -> pa.Table:
    """A folder of Parquet files (local or a URI such as s3://...), `key=value/` folders included, as one table."""
    import pyarrow.dataset as pads

    fs, base = filesystem(path)
    return pads.dataset(base, format="parquet", filesystem=fs, partitioning="hive").to_table()


def read_reviews(reviews_path: str | None = None, kept: bool = False) -> pa.Table:
    """The reviews as one table (a local folder or a URI such as s3://...?endpoint_override=...).

    kept=True: only the reviews with words left after `clean_review_text`, their text cleaned.
    """
    table = read_parquet_folder(reviews_path or paths().reviews)
    if not kept:
        return table
    texts = [clean_review_text(t) for t in table.column("text").to_pylist()]
    keep = pa.array([bool(t) for t in texts])
    return table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string())).filter(keep)


def _review(rng: random.Random, rating: int, name: str, category: str) -> str:
    positive = rating >= 4
    closer = rng.choice(_REVIEW_CLOSERS).format(verb="definitely" if positive else "not",
                                                Verb="Will" if positive else "Will not")
    parts = [rng.choice(_REVIEW_OPENERS[rating]).format(name=name, category=category),
             rng.choice(_REVIEW_BODIES[rating]), closer]
    text = " ".join(p for p in parts if p)
    noise = rng.randrange(4)  # messy input, as scraped reviews are
    if noise == 1:
        text = f"  <p>{text}</p>\n"
    elif noise == 2:
        text = text.replace(". ", ".  <br/> ", 1)
    elif noise == 3:
        text = "\t" + text.replace(" ", "   ", 2) + "  "
    return text


_DRIFT_SENTENCES = ["I had to contact support twice and wait a week for a reply.",
                     "The instructions were missing, so setting it up took an afternoon.",
                     "The box was damaged in transit and one part was scratched."]


def new_reviews(n: int, seed: int, drift: float = 0.0, size: str | None = None) -> pa.Table:
    """`n` NEW reviews (never in the course data), ids from R900001: review_id, product_id, rating, text.

    Same writer and products as `reviews/`, another random seed: data a trained model has not
    seen. `drift` (0..1) moves the window away from the training data, as a new source of
    reviews would: the rating mix shifts from mostly positive (1:1:1:2:3) towards mostly negative
    (3:2:1:1:1), and a share `drift` of the reviews gets an extra sentence, so they grow longer.
    """
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"Expected drift between 0 and 1, found {drift!r}.")
    c = counts(size)
    products = _products(c)
    names, categories = products.column("name").to_pylist(), products.column("category").to_pylist()
    weights = [(1 - drift) * a + drift * b for a, b in zip([1, 1, 1, 2, 3], [3, 2, 1, 1, 1])]
    rng = random.Random(seed)
    rows: dict[str, list] = {"review_id": [], "product_id": [], "rating": [], "text": []}
    for r in range(n):
        p = rng.randrange(c.products)
        rating = rng.choices([1, 2, 3, 4, 5], weights=weights)[0]
        text = _review(rng, rating, names[p], categories[p])
        if rng.random() < drift:
            text = f"{text} {rng.choice(_DRIFT_SENTENCES)}"
        rows["review_id"].append(f"R{900_001 + r:06d}")
        rows["product_id"].append(f"P{p + 1:06d}")
        rows["rating"].append(rating)
        rows["text"].append(text)
    return pa.table({"review_id": pa.array(rows["review_id"], pa.string()), "product_id": pa.array(rows["product_id"], pa.string()),
                     "rating": pa.array(rows["rating"], pa.int8()), "text": pa.array(rows["text"], pa.string())})


def write_heldout_reviews(folder: str, n: int, seed: int, size: str | None = None) -> pa.Table:
    """Write `new_reviews(n, seed)` as one Parquet file in `folder` (cleared first), and return them.

    Graders use it for held-out tests: reviews a trained model has never seen.
    """
    table = new_reviews(n, seed, size=size)
    fs, base = filesystem(folder)
    fs.create_dir(base, recursive=True)
    fs.delete_dir_contents(base, missing_dir_ok=True)
    pq.write_table(table, f"{base}/part-000.parquet", filesystem=fs)
    return table


def ab_outcomes(n: int, rate_a: float, rate_b: float, seed: int, share_b: float = 0.5) -> pa.Table:
    """`n` simulated requests of an A/B test: request_id, variant ("A" or "B"), converted (bool).

    Each request goes to B with probability `share_b`, and converts with its variant's rate.
    Graders use it for hidden cases whose right decision is known; lessons get their outcomes
    from real traffic through two deployed model versions.
    """
    for name, value in (("rate_a", rate_a), ("rate_b", rate_b), ("share_b", share_b)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Expected {name} between 0 and 1, found {value!r}.")
    rng = np.random.default_rng(seed)
    b = rng.random(n) < share_b
    converted = rng.random(n) < np.where(b, rate_b, rate_a)
    return pa.table({"request_id": pa.array([f"Q{i + 1:07d}" for i in range(n)], pa.string()),
                     "variant": pa.array(np.where(b, "B", "A").tolist(), pa.string()),
                     "converted": pa.array(converted, pa.bool_())})


def _write_reviews(fs: pafs.FileSystem, folder: str, c: Counts, products: pa.Table) -> None:
    rng = random.Random(SEED + 2)
    names = products.column("name").to_pylist()
    categories = products.column("category").to_pylist()
    per_part = c.reviews // c.review_parts
    for part in range(c.review_parts):
        ids, pids, ratings, texts = [], [], [], []
        for r in range(part * per_part, (part + 1) * per_part):
            p = rng.randrange(c.products)
            rating = rng.choices([1, 2, 3, 4, 5], weights=[1, 1, 1, 2, 3])[0]
            blank = (r + 1) % 32 == 0  # no words after cleaning: lesson 2.2 drops these
            text = rng.choice(["", "   ", "<br/>", "<p> </p>", "&nbsp;"]) if blank else _review(rng, rating, names[p], categories[p])
            ids.append(f"R{r + 1:06d}")
            pids.append(f"P{p + 1:06d}")
            ratings.append(rating)
            texts.append(text)
        table = pa.table({
            "review_id": pa.array(ids, pa.string()),
            "product_id": pa.array(pids, pa.string()),
            "rating": pa.array(ratings, pa.int8()),
            "text": pa.array(texts, pa.string()),
        })
        pq.write_table(table, f"{folder}/part-{part:03d}.parquet", filesystem=fs)
