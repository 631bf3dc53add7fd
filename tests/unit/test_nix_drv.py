"""The system of a derivation is read from its .drv file (ATerm) without running nix."""

from __future__ import annotations

import pytest

from ociforge.nix.runner import system_of_drv_text

DRV = (
    'Derive([("out","/nix/store/aaa-x","","")],[("/nix/store/bbb-y.drv",["out"])],'
    '["/nix/store/ccc-src"],"{system}","/bin/sh",["-c","echo \\"),[\\" > $out"],'
    '[("name","x")])'
)


@pytest.mark.parametrize("system", ["x86_64-linux", "aarch64-linux", "builtin", "i686-linux"])
def test_system_is_the_fourth_field(system: str) -> None:
    assert system_of_drv_text(DRV.format(system=system)) == system


def test_quotes_and_brackets_inside_strings_do_not_confuse_it() -> None:
    tricky = 'Derive([("o\\"ut],","/x","","")],[],[],"riscv64-linux","b",[],[])'
    assert system_of_drv_text(tricky) == "riscv64-linux"


@pytest.mark.parametrize(
    "text", ["", "not a drv", "Derive([],[],[]", 'Derive([],[],[],"unterminated']
)
def test_garbage_gives_none(text: str) -> None:
    assert system_of_drv_text(text) is None
