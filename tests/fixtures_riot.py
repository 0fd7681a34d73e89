"""Fixtures for the RIOT tests: they skip, with the way to get RIOT, when there is none."""
import pytest

from utils import riot


# Every RIOT test asks for riot_base first: pytest sets up session fixtures (the quick model,
# its tar, the host digits) before module ones, and without RIOT none of them is needed.
@pytest.fixture(scope="session")
def riot_base():
    base = riot.riot_base()
    if not riot.riot_present(base):
        pytest.skip(f"no RIOT in {base}: set RIOTBASE or `git clone {riot.RIOT_URL} RIOT` "
                    f"to test the RIOT builds")
    return base
