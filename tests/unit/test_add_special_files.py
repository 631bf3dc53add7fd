"""``--add`` refuses FIFOs, sockets and device files by name, and never blocks reading one."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from ociforge.assemble import essentials
from ociforge.assemble.essentials import host_entries
from ociforge.errors import UsageError


def test_a_fifo_is_refused_naming_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UsageError, match=rf"--add {tmp_path}/pipe: is a FIFO"):
        host_entries(str(tmp_path / "pipe"), "/etc/x")


def test_a_fifo_inside_an_added_directory_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.conf").write_text("a\n")
    os.mkfifo(tmp_path / "conf" / "pipe")
    with pytest.raises(UsageError, match=rf"--add {tmp_path}/conf/pipe: is a FIFO"):
        host_entries(str(tmp_path / "conf"), "/etc/conf")


def test_sockets_and_devices_are_refused_naming_their_kind(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(UsageError, match="sock: is a socket"):
            host_entries(str(tmp_path / "sock"), "/run/sock")
    with pytest.raises(UsageError, match="/dev/null: is a device file"):
        host_entries("/dev/null", "/x")


def test_a_file_that_becomes_a_fifo_after_it_was_listed_is_refused_not_read(
    tmp_path: Path,
) -> None:
    """Listing and reading are two steps: a file swapped for a FIFO between them used to block
    the build in ``open`` until some writer came along."""
    path = tmp_path / "conf"
    path.write_text("listed as a regular file\n")
    listed = os.lstat(path)
    path.unlink()
    os.mkfifo(path)
    # A writer for the old code's blocking open, so that this test fails instead of hanging.
    writer = threading.Thread(target=lambda: os.close(os.open(path, os.O_WRONLY)))
    writer.start()
    try:
        with pytest.raises(UsageError, match=rf"--add {path}: is a FIFO"):
            essentials._host_tree(str(path), "/etc/conf", listed)
    finally:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets a waiting writer go on
        writer.join()
        os.close(reader)
