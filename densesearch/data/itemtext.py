"""Clean item text from Amazon Reviews 2023 metadata fields (every field shape seen in the real data)."""

from __future__ import annotations

import hashlib
import html
import math
import re
from dataclasses import dataclass

# Stored display fields are capped (the indexed text is capped by PrepareConfig.max_text_chars).
MAX_TITLE_CHARS = 300
MAX_STORE_CHARS = 100
_TAG_RE = re.compile(r"<[^>]+>")
_SPACE_RE = re.compile(r"\s+")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NORM_RE = re.compile(r"[^a-z0-9]+")
# Detail keys that describe the product; dates, dimensions and model numbers are noise for retrieval.
USEFUL_DETAILS = (
    "Department", "Color", "Material", "Style", "Closure Type", "Pattern", "Theme", "Sport",
    "Fabric Type", "Sleeve Type", "Neck Style", "Fit Type", "Special Feature", "Shape", "Size",
    "Frame Material", "Lens Material", "Heel Type", "Sole Material", "Occasion", "Care Instructions",
    "Product Care Instructions", "Age Range (Description)", "Season", "Waist Style", "Length",
)


def clean_text(value: object) -> str:
    """Unescape HTML, drop tags, collapse whitespace; lists are joined, never shown as Python reprs."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(part for part in (clean_text(v) for v in value) if part)
    if isinstance(value, dict):
        return " ".join(f"{clean_text(k)}: {clean_text(v)}" for k, v in value.items() if clean_text(v))
    text = html.unescape(str(value))
    text = _TAG_RE.sub(" ", text)
    return _SPACE_RE.sub(" ", text).strip()


def as_list(value: object) -> list[str]:
    """A metadata list field (features, description) as clean non-empty strings; scalars become one item."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [text for text in (clean_text(v) for v in items) if text]


def split_sentences(text: str) -> list[str]:
    """Split a bullet or paragraph into sentences."""
    return [s.strip() for s in _SENTENCE_RE.split(text) if s.strip()]


def normalise(text: str) -> str:
    """Lowercase alphanumerics only: the key used for duplicate and leak checks."""
    return _NORM_RE.sub(" ", text.lower()).strip()


def as_float(value: object) -> float | None:
    """A finite number from a float, int or string field ('$12.99', '—'), else None (also for 1e400, NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value) if abs(value) < 1e300 else math.inf
    else:
        match = re.search(r"\d+(?:\.\d+)?", str(value)[:100].replace(",", ""))
        number = float(match.group()) if match else math.nan
    return number if math.isfinite(number) else None


def cap(text: str, max_chars: int) -> str:
    """``text`` cut at a word boundary to at most ``max_chars`` characters."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut


def first_image_url(images: object) -> str:
    """The first product picture's URL (Amazon's ``images`` list of {large, hi_res, thumb}), else ''."""
    if not isinstance(images, list):
        return ""
    for image in images:
        if isinstance(image, dict):
            for key in ("large", "hi_res", "thumb"):
                url = image.get(key)
                if isinstance(url, str) and url.startswith(("https://", "http://")) and len(url) <= 500:
                    return url
    return ""


def details_text(details: object) -> str:
    """The useful product details as 'Key: value' pairs."""
    if not isinstance(details, dict):
        return ""
    parts = []
    for key in USEFUL_DETAILS:
        value = clean_text(details.get(key))
        if value:
            parts.append(f"{key}: {value}")
    return "; ".join(parts)


@dataclass
class ItemFields:
    """The cleaned fields of one metadata row, before any sentences are held out."""

    item_id: str
    title: str
    store: str
    sentences: list[str]          # feature bullets and description, split into sentences, in order
    details: str
    rating: float | None
    rating_number: int | None
    price: float | None
    category: str                 # the category path ("A > B > C"), else the main category
    image: str = ""

    def display_fields(self) -> dict:
        """The fields a result shows (title, store, rating, price, picture), beside the indexed text."""
        return {"title": self.title, "store": self.store, "rating": self.rating, "rating_number": self.rating_number,
                "price": self.price, "image": self.image, "category": self.category}

    @classmethod
    def from_record(cls, record: dict) -> ItemFields:
        """Parse one metadata record; raises ValueError with the reason for an unusable row."""
        item_id = record.get("parent_asin")
        if not isinstance(item_id, str) or not item_id.strip():
            raise ValueError("missing parent_asin")
        title = cap(clean_text(record.get("title")), MAX_TITLE_CHARS)
        sentences = [s for bullet in as_list(record.get("features")) + as_list(record.get("description"))
                     for s in split_sentences(bullet)]
        if not title and not sentences:
            raise ValueError("no title, features or description")
        rating_number = as_float(record.get("rating_number"))
        return cls(
            item_id=item_id.strip(),
            title=title,
            store=cap(clean_text(record.get("store")), MAX_STORE_CHARS),
            sentences=sentences,
            details=details_text(record.get("details")),
            rating=as_float(record.get("average_rating")),
            rating_number=int(rating_number) if rating_number is not None else None,
            price=as_float(record.get("price")),
            category=" > ".join(as_list(record.get("categories"))) or clean_text(record.get("main_category")),
            image=first_image_url(record.get("images")),
        )

    def text(self, max_chars: int, exclude: frozenset[str] = frozenset()) -> str:
        """The indexed item text: title, brand, listing sentences (minus ``exclude``), details; capped."""
        body = " ".join(s for s in _dedupe(self.sentences) if s not in exclude)
        parts = [self.title, f"Brand: {self.store}." if self.store else "", body, self.details]
        text = " ".join(p for p in parts if p)
        return cap(text, max_chars)

    def group_key(self) -> str:
        """Variant group: listings of one product (same normalised title and store) share it."""
        key = f"{normalise(self.title)}|{normalise(self.store)}" if self.title else f"id|{self.item_id}"
        return hashlib.sha1(key.encode()).hexdigest()[:12]


def _dedupe(sentences: list[str]) -> list[str]:
    seen: set[str] = set()
    unique = []
    for sentence in sentences:
        if sentence not in seen:
            seen.add(sentence)
            unique.append(sentence)
    return unique
