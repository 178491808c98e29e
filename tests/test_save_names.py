"""Save names of the UnHype Trainer: letters of any script are kept, nothing leaves the folder."""

import os
import sys
import unicodedata

import pytest

from _nodes_helpers import _unhype_host, host  # noqa: F401

pytestmark = pytest.mark.host


def training():
    return sys.modules[host()[1].__name__ + ".nodes.comfy_training"]


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
    name = training().sanitise_name(given)
    assert name == expected
    assert os.sep not in name and "/" not in name and "\\" not in name and ".." not in name
    assert unicodedata.is_normalized("NFC", name)


def test_kept_names_are_written_and_listed_as_given(tmp_path):
    """The file system takes the names (longest one included) and lists them back unchanged."""
    t = training()
    folder = tmp_path / "unhype"
    names = [t.sanitise_name(n) for n in ("ünïcødé", "猫を消す", "名" * 150, "e\u0301te\u0301")]
    for stem in names:
        path = t.unique_path(str(folder), stem)
        assert os.path.dirname(path) == str(folder)
        with open(path + ".partial-write", "wb"):  # the longest name written while saving
            pass
        os.replace(path + ".partial-write", path)
        assert t.unique_path(str(folder), stem).endswith(stem + "_2" + t.EXTENSION)
    assert sorted(os.listdir(folder)) == sorted(n + t.EXTENSION for n in names)
