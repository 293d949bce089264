"""SOURCE listing: folders, globs, list files, fsspec URLs; stable relative ids."""
import fsspec
import pytest

from pipeline.io.sources import list_images, read_bytes


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.PNG", "notes.txt", "sub/c.jpeg"):
        (tmp_path / name).write_bytes(b"x" + name.encode())
    return tmp_path


def test_folder_is_recursive_and_skips_non_images(tree):
    refs = list_images(str(tree))
    assert [r.image_id for r in refs] == ["a.PNG", "b.jpg", "sub/c.jpeg"]
    assert read_bytes(refs[1].uri) == b"xb.jpg"


def test_glob(tree):
    assert [r.image_id for r in list_images(str(tree / "*.jpg"))] == ["b.jpg"]
    assert [r.image_id for r in list_images(str(tree / "**" / "*.jpeg"))] == ["sub/c.jpeg"]


def test_list_file_relative_and_absolute(tree):
    (tree / "list.txt").write_text(f"# a comment\nb.jpg\n\n{tree / 'sub' / 'c.jpeg'}\n")
    refs = list_images(str(tree / "list.txt"))
    assert [read_bytes(r.uri) for r in refs] == [b"xb.jpg", b"xsub/c.jpeg"]


def test_fsspec_url():
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/imgs/x.jpg", b"1")
    fs.pipe("/bucket/imgs/deep/y.png", b"2")
    refs = list_images("memory://bucket/imgs")
    assert [r.image_id for r in refs] == ["deep/y.png", "x.jpg"]
    assert read_bytes(refs[0].uri) == b"2"


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list_images(str(tmp_path / "nope"))
