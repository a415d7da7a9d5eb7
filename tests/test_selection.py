"""Face selection: all / largest / match / many-to-many map, with synthetic identity embeddings.

The selector's contract is the ``embed(frame, faces)`` callable, so a deterministic fake stands in for the
identity model here: each face carries its "true" embedding in ``Face.extra``.
"""

from __future__ import annotations

import numpy as np
import pytest

from swapwatch.engines.faces import Face
from swapwatch.engines.swap import DEFAULT_SOURCE, DEFAULT_THRESHOLD, FaceSelection
from swapwatch.errors import InputError

D = 512
FRAME = np.zeros((480, 640, 3), np.uint8)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def people() -> dict[str, np.ndarray]:
    """Random orthonormal 512-d identities (cosine 0 between different people; ArcFace gives about 0 +- 0.1),
    plus a unit vector orthogonal to all of them for building exact similarities."""
    q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(D, 5)))
    return dict(zip(("alice", "bob", "carol", "dave", "_other"), q.T))


def mixture(people: dict[str, np.ndarray], **cosines: float) -> np.ndarray:
    """A unit embedding with exactly these cosines to the named people (and 0 to the others)."""
    v = sum(c * people[name] for name, c in cosines.items())
    return v + np.sqrt(1.0 - sum(c * c for c in cosines.values())) * people["_other"]


def with_similarity(base: np.ndarray, cos: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine with ``base`` is exactly ``cos`` (another photo of the same person)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=base.shape)
    noise = unit(noise - (noise @ base) * base)
    return cos * base + np.sqrt(1 - cos**2) * noise


def face(x: float, size: float, identity: np.ndarray) -> Face:
    box = [x, 100, x + size, 100 + size * 1.2]
    lm = [[x + 0.3 * size, 150], [x + 0.7 * size, 150], [x + 0.5 * size, 170], [x + 0.35 * size, 190],
          [x + 0.65 * size, 190]]
    return Face(box, 0.9, lm, extra={"identity": identity})


def fake_embed(frame: np.ndarray, faces) -> np.ndarray:
    assert frame is FRAME
    return np.stack([f.extra["identity"] for f in faces])


def test_default_threshold_is_in_arcface_verification_range():
    assert 0.3 <= DEFAULT_THRESHOLD <= 0.4


def test_all_and_largest(people):
    faces = [face(0, 80, people["alice"]), face(200, 150, people["bob"]), face(400, 120, people["carol"])]
    everyone = FaceSelection.parse("all").select(faces, FRAME)
    assert [(f.box[0], k) for f, k in everyone] == [(0, DEFAULT_SOURCE), (200, DEFAULT_SOURCE), (400, DEFAULT_SOURCE)]
    largest = FaceSelection.parse("largest").select(faces, FRAME)
    assert len(largest) == 1 and largest[0][0] is faces[1] and largest[0][1] == DEFAULT_SOURCE
    # Neither mode needs embeddings.
    assert not FaceSelection.parse("all").needs_embeddings
    assert FaceSelection.parse(" LARGEST ").mode == "largest"
    assert FaceSelection.parse("all").select([], FRAME) == []
    assert FaceSelection.parse("largest").select([], FRAME) == []


def test_match_picks_the_best_face_above_threshold(people):
    ref = with_similarity(people["alice"], 0.7, seed=1)  # the reference photo of alice
    faces = [face(0, 100, people["bob"]), face(200, 100, people["alice"]), face(400, 100, people["carol"])]
    sel = FaceSelection.match(ref)
    assert sel.needs_embeddings and sel.source_keys == (DEFAULT_SOURCE,)
    out = sel.select(faces, FRAME, fake_embed)
    assert [(f.box[0], k) for f, k in out] == [(200, DEFAULT_SOURCE)]
    # No one like alice in the frame: nothing is swapped.
    assert sel.select([faces[0], faces[2]], FRAME, fake_embed) == []
    # Two alice look-alikes: only the better one (a person appears once per frame).
    twin = face(600, 100, with_similarity(people["alice"], 0.8, seed=2))
    out = sel.select([faces[1], twin], FRAME, fake_embed)
    sims = [fake_embed(FRAME, [f])[0] @ sel.references[0][1] for f in (faces[1], twin)]
    assert len(out) == 1 and out[0][0] is (faces[1], twin)[int(np.argmax(sims))]


@pytest.mark.parametrize("cos, swapped", [(0.30, False), (0.34, False), (0.36, True), (0.5, True)])
def test_threshold_boundary(people, cos, swapped):
    ref = people["alice"]
    target = face(0, 100, with_similarity(ref, cos, seed=3))
    out = FaceSelection.match(ref).select([target], FRAME, fake_embed)
    assert bool(out) is swapped
    # A custom threshold moves the boundary.
    assert bool(FaceSelection.match(ref, threshold=cos - 0.01).select([target], FRAME, fake_embed))
    assert not FaceSelection.match(ref, threshold=cos + 0.01).select([target], FRAME, fake_embed)


def test_map_assigns_each_face_its_source(people):
    pairs = [("A", with_similarity(people["alice"], 0.6, 10)), ("B", with_similarity(people["bob"], 0.6, 11)),
             ("C", with_similarity(people["carol"], 0.6, 12))]
    sel = FaceSelection.mapping(pairs)
    assert sel.source_keys == ("A", "B", "C")
    faces = [face(0, 100, people["bob"]), face(200, 100, people["dave"]), face(400, 100, people["alice"])]
    out = sel.select(faces, FRAME, fake_embed)
    # Dave matches no one; carol is absent; output follows the faces' order.
    assert [(f.box[0], k) for f, k in out] == [(0, "B"), (400, "A")]


def test_map_is_one_to_one_and_optimal(people):
    sel = FaceSelection.mapping([("A", people["alice"]), ("B", people["bob"])])
    thr = DEFAULT_THRESHOLD
    f0 = face(0, 100, mixture(people, alice=0.8, bob=0.5))  # looks like A, somewhat like B
    # Face 1 weakly like A (0.4): greedy best-source-per-face would give A to both faces. One-to-one, the
    # total margins are A->f0: 0.45 against B->f0 + A->f1: 0.15 + 0.05, so f0 keeps A and f1 gets nothing.
    weak = face(200, 100, mixture(people, alice=0.4))
    out = sel.select([f0, weak], FRAME, fake_embed)
    assert [(f.box[0], k) for f, k in out] == [(0, "A")]
    assert (0.8 - thr) > (0.5 - thr) + (0.4 - thr)
    # Face 1 clearly A (0.75): now B->f0 + A->f1 = 0.15 + 0.40 beats A->f0 = 0.45, although f0 on its own
    # prefers A: the assignment is global, not face by face.
    strong = face(200, 100, mixture(people, alice=0.75))
    assert (0.5 - thr) + (0.75 - thr) > (0.8 - thr)
    out = sel.select([f0, strong], FRAME, fake_embed)
    assert [(f.box[0], k) for f, k in out] == [(0, "B"), (200, "A")]


def test_map_with_more_faces_than_sources_and_repeated_keys(people):
    # Two reference photos of alice under one key: the better one counts.
    pairs = [("A", with_similarity(people["alice"], 0.2, 30)), ("A", with_similarity(people["alice"], 0.7, 31)),
             ("B", people["bob"])]
    sel = FaceSelection.mapping(pairs)
    assert sel.source_keys == ("A", "B")
    faces = [face(x, 100, people[n]) for x, n in [(0, "carol"), (200, "alice"), (400, "bob"), (600, "dave")]]
    out = sel.select(faces, FRAME, fake_embed)
    assert [(f.box[0], k) for f, k in out] == [(200, "A"), (400, "B")]
    sims, keys = sel.similarities(fake_embed(FRAME, faces))
    assert sims.shape == (4, 2) and keys == ("A", "B")
    assert sims[1, 0] == pytest.approx(0.7, abs=1e-9)  # the better of alice's two photos


def test_embed_output_is_checked(people):
    sel = FaceSelection.match(people["alice"])
    faces = [face(0, 100, people["alice"])]
    with pytest.raises(ValueError, match="1 faces"):
        sel.select(faces, FRAME, lambda fr, fs: np.stack([people["alice"]] * 2))
    with pytest.raises(ValueError, match="different identity models"):
        sel.select(faces, FRAME, lambda fr, fs: np.ones((1, 128)))
    with pytest.raises(ValueError):
        sel.select(faces, FRAME)  # no embed callable
    # Unnormalised embeddings are normalised, not misread.
    assert sel.select(faces, FRAME, lambda fr, fs: 5.0 * people["alice"][None])[0][0] is faces[0]
    # No faces: embed is not even called.
    assert sel.select([], FRAME, lambda fr, fs: pytest.fail("called")) == []


def test_parse_match_and_map_with_files_then_resolve(tmp_path, people):
    ref_a, ref_b = tmp_path / "alice.jpg", tmp_path / "bob.jpg"
    ref_a.write_bytes(b"x")
    ref_b.write_bytes(b"x")
    match = FaceSelection.parse(f"match:{ref_a}", threshold=0.4)
    assert match.mode == "match" and match.threshold == 0.4 and match.reference_files == ((DEFAULT_SOURCE, ref_a),)
    with pytest.raises(RuntimeError, match="resolve"):
        match.select([face(0, 100, people["alice"])], FRAME, fake_embed)
    lookup = {ref_a: people["alice"], ref_b: people["bob"]}
    resolved = match.resolve(lambda path: lookup[path])
    assert resolved.reference_files == () and len(resolved.references) == 1
    faces = [face(0, 100, people["bob"]), face(200, 100, people["alice"])]
    assert [f.box[0] for f, _ in resolved.select(faces, FRAME, fake_embed)] == [200]

    mapping = FaceSelection.parse(f"map:alice={ref_a}, bob = {ref_b}").resolve(lambda path: lookup[path])
    assert mapping.source_keys == ("alice", "bob")
    out = mapping.select(faces, FRAME, fake_embed)
    assert [(f.box[0], k) for f, k in out] == [(0, "bob"), (200, "alice")]


@pytest.mark.parametrize("spec, message", [
    ("everyone", "unknown face selection"),
    ("", "unknown face selection"),
    ("largest:3", "takes no argument"),
    ("match:", "missing the reference photo"),
    ("match:/no/such/ref.jpg", "reference photo not found"),
    ("map:alice", "is not NAME=REF.jpg"),
    ("map:=x.jpg", "is not NAME=REF.jpg"),
    ("map:alice=/no/such.jpg", "reference photo not found"),
])
def test_parse_errors_are_one_line_input_errors(spec, message):
    with pytest.raises(InputError, match=message) as info:
        FaceSelection.parse(spec)
    assert "\n" not in str(info.value)


def test_construction_errors(people):
    with pytest.raises(InputError, match="outside"):
        FaceSelection.parse("all", threshold=1.5)
    with pytest.raises(InputError, match="needs at least one reference"):
        FaceSelection.mapping([])
    with pytest.raises(ValueError, match="non-zero"):
        FaceSelection.match(np.zeros(D))
