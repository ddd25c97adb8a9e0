"""Which images a node runs. A task names an image; the node runs it only if it matches one
of the operator's `allowed_images` patterns: by reference (`vpnagent/*`,
`registry.example.org/fl/*:1.*`) or by digest (`sha256:<image id>`,
`name@sha256:<repo digest>`), the way vantage6 node policies allow algorithms. A digest pins
the exact bytes: a tag can be moved to other content, an image id cannot."""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


class ImageRefused(Exception):
    """The node does not run this image; the message is what the run's log at the server shows."""


@dataclass(frozen=True)
class LocalImage:
    """What the node knows of an image present on it."""

    reference: str  # as the task names it
    image_id: str  # sha256:<64 hex>, the content address of the local image
    repo_digests: tuple[str, ...] = ()  # name@sha256:<digest> of the registry manifest, if pulled


def _normalise(reference: str) -> str:
    """`name` means `name:latest` (as Docker reads it), unless a digest or tag is given."""
    last = reference.rsplit("/", 1)[-1]
    return reference if "@" in reference or ":" in last else f"{reference}:latest"


def allowed(image: LocalImage, patterns: tuple[str, ...] | None) -> bool:
    if patterns is None:
        return True
    ref = _normalise(image.reference)
    for pattern in patterns:
        if pattern.startswith("sha256:"):
            if image.image_id == pattern:
                return True
        elif "@sha256:" in pattern:
            if pattern in image.repo_digests:
                return True
        elif fnmatchcase(ref, _normalise(pattern)) or fnmatchcase(ref, pattern):
            return True
    return False


def check(image: LocalImage, patterns: tuple[str, ...] | None) -> None:
    """Raise ImageRefused unless the node's policy allows `image`."""
    if not allowed(image, patterns):
        raise ImageRefused(f"image {image.reference} ({image.image_id[:19]}) is not in this node's allowed_images; "
                           "the node's operator decides which algorithms run here")
