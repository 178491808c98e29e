"""A network made for one family is refused on every other, with a message naming both: every
pair of unhype.families.FAMILIES, so a family added later is covered without a new test."""

import itertools

import pytest

from unhype.families import FAMILIES
from unhype.network import FamilyMismatchError, NetworkInfo, check_family


@pytest.mark.parametrize("made_for, model", list(itertools.permutations(FAMILIES, 2)))
def test_a_network_is_refused_on_every_other_family(made_for, model):
    info = NetworkInfo(made_for, FAMILIES[made_for].target_preset, title="net")
    with pytest.raises(FamilyMismatchError) as error:
        check_family(info, model)
    message = str(error.value)
    for name in (made_for, model):
        assert FAMILIES[name].label in message and f"({name};" in message
    assert FAMILIES[made_for].embedding_source in message


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_its_own_family_is_accepted(name):
    check_family(NetworkInfo(name, FAMILIES[name].target_preset), name)
