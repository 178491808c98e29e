"""Save names of the files the pack writes (unhype/files.py): letters of any script are kept,
nothing leaves the folder, nothing is overwritten."""

import os
import unicodedata

import pytest

from unhype.files import EXTENSION, PARTIAL, sanitise_name, unique_path


@pytest.mark.parametrize("given, expected", [
    ("ünïcødé", "ünïcødé"),
    ("Ölmalerei – Stillleben", "Ölmalerei_Stillleben"),
    ("猫を消す", "猫を消す"),
    ("हिन्दी नेटवर्क", "हिन्दी_नेटवर्क"),  # vowel signs and the virama are marks: kept
    ("e\u0301te\u0301", "\u00e9t\u00e9"),  # typed decomposed, stored composed
    ("Zürich/../../etc", "Zürich_._._etc"),
    ("..／..／ｘ", "ｘ"),  # a full-width solidus is a symbol, not a letter
    ("a\u202eexe.txt", "a_exe.txt"),  # an invisible right-to-left override
    ("tab\there\x00nul", "tab_here_nul"),
    ("COM¹", "_COM¹"),  # Windows device names with superscript digits too
    ("lpt².net", "_lpt².net"),
    pytest.param("名" * 150, "名" * 66, id="150 CJK"),  # 3 UTF-8 bytes each: <= 200 bytes
])
def test_save_names_keep_letters_of_any_script(given, expected):
    name = sanitise_name(given)
    assert name == expected
    assert os.sep not in name and "/" not in name and "\\" not in name and ".." not in name
    assert unicodedata.is_normalized("NFC", name)


def test_kept_names_are_written_and_listed_as_given(tmp_path):
    """The file system takes the names (longest one included) and lists them back unchanged."""
    folder = tmp_path / "unhype"
    names = [sanitise_name(n) for n in ("ünïcødé", "猫を消す", "名" * 150, "e\u0301te\u0301")]
    for stem in names:
        path = unique_path(str(folder), stem)
        assert os.path.dirname(path) == str(folder)
        with open(path + PARTIAL, "wb"):  # the longest name written while saving
            pass
        os.replace(path + PARTIAL, path)
        assert unique_path(str(folder), stem).endswith(stem + "_2" + EXTENSION)
    assert sorted(os.listdir(folder)) == sorted(n + EXTENSION for n in names)


@pytest.mark.parametrize("given, expected", [
    ("my net", "my_net"),
    ("../../etc/passwd", "etc_passwd"),
    ("/abs/path/x.safetensors", "abs_path_x"),
    ("C:\\Users\\x\\net", "C_Users_x_net"),
    ("a..b", "a.b"),
    ("...", "unhype"),
    ("", "unhype"),
    ("nul", "_nul"),
    ("Zebra-erase_v1.2", "Zebra-erase_v1.2"),
    ("ünïcode ✓", "ünïcode"),
])
def test_save_names_are_sanitised(given, expected):
    name = sanitise_name(given)
    assert name == expected
    assert os.sep not in name and "/" not in name and ".." not in name


def test_unique_path_never_overwrites(tmp_path):
    unique = unique_path
    first = unique(str(tmp_path), "net")
    assert first.endswith("net.safetensors")
    open(first, "wb").close()
    second = unique(str(tmp_path), "net")
    assert second.endswith("net_2.safetensors")
    open(second, "wb").close()
    assert unique(str(tmp_path), "net").endswith("net_3.safetensors")
