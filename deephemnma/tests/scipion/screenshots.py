"""Headless screenshots of Scipion windows: a private Xvfb display and a grab of a Tk window as PNG."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

SCREENSHOT_DIR_VAR = 'DEEPHEMNMA_SCREENSHOT_DIR'


def screenshot_dir() -> Path:
    """Where tests save their screenshots: ``$DEEPHEMNMA_SCREENSHOT_DIR`` or a folder of the test user data."""
    folder = Path(os.environ.get(SCREENSHOT_DIR_VAR) or Path(os.environ.get('SCIPION_USER_DATA', tempfile.gettempdir()))
                  / 'screenshots')
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def virtual_display(width: int = 1280, height: int = 1024) -> Iterator[str]:
    """Start Xvfb on a free display number, point DISPLAY at it, and stop it afterwards."""
    if shutil.which('Xvfb') is None:
        raise RuntimeError('Xvfb is needed for headless screenshots: apt-get install xvfb (see the README)')
    process = subprocess.Popen(['Xvfb', '-displayfd', '1', '-screen', '0', f'{width}x{height}x24', '-nolisten', 'tcp'],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    display = ':' + process.stdout.readline().strip()
    previous = os.environ.get('DISPLAY')
    os.environ['DISPLAY'] = display
    try:
        yield display
    finally:
        process.terminate()
        process.wait(timeout=10)
        if previous is None:
            os.environ.pop('DISPLAY', None)
        else:
            os.environ['DISPLAY'] = previous


def grab_window(root, path: Path, display: str, width: int = 900, height: int = 900) -> Path:
    """Show the Tk window ``root`` at the top-left corner with the given size and save it as a PNG."""
    from PIL import ImageGrab
    root.geometry(f'{width}x{height}+0+0')
    root.deiconify()
    root.wait_visibility()
    for _ in range(10):
        root.update()
        time.sleep(0.05)
    x, y = root.winfo_rootx(), root.winfo_rooty()
    image = ImageGrab.grab(bbox=(x, y, x + root.winfo_width(), y + root.winfo_height()), xdisplay=display)
    image.save(path)
    return path
