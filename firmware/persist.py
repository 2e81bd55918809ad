# Atomic JSON persistence on the device filesystem (littlefs / FAT on a board, POSIX on unix).
#
# File format: line 1 = compact JSON, line 2 = sha256 hex of line 1. save() writes <path>.tmp,
# flushes (and syncs where the port can), then renames it over <path>: a reset at any point
# leaves either the old file or the new one. On FAT, where rename refuses an existing target, the
# old file is removed first; if power fails in that window load() recovers the complete .tmp.
# load() never raises for a missing or damaged file: it returns (None, message).

import os
import json
import hashlib
try:
    import binascii
except ImportError:
    import ubinascii as binascii


def _digest(data):
    return binascii.hexlify(hashlib.sha256(data).digest())


def _sync(f):
    f.flush()
    fs = getattr(os, 'fsync', None)         # CPython
    if fs is not None and hasattr(f, 'fileno'):
        try:
            fs(f.fileno())
        except Exception:
            pass
    s = getattr(os, 'sync', None)           # MicroPython VFS (esp32, rp2)
    if s is not None:
        try:
            s()
        except Exception:
            pass


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def save(path, obj):
    """Write obj (JSON-serialisable) to path atomically. Raises OSError on a storage failure
    (then the previous file is untouched). The JSON goes to the file in pieces (json.dump) and
    its digest is taken by reading it back in 64-byte chunks: the whole text never sits in the
    heap (the settings, two configs, are ~0.9 KB, and a command saves them in a fragmented heap:
    docs/resources.md)."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f)
    h = hashlib.sha256()
    buf = bytearray(64)
    mv = memoryview(buf)
    with open(tmp, 'rb') as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    with open(tmp, 'ab') as f:
        f.write(b'\n')
        f.write(binascii.hexlify(h.digest()))
        f.write(b'\n')
        _sync(f)
    try:
        os.rename(tmp, path)
    except OSError:
        # FAT: rename does not replace. Remove, then rename (load() recovers .tmp if we die here).
        if _exists(path):
            os.remove(path)             # an error here: the old file is untouched, nothing saved
        try:
            os.rename(tmp, path)
        except OSError:
            # the old file is gone and the complete new one is <path>.tmp, which load() takes:
            # it is saved (raising would refuse a command that applies after the next reset)
            pass


# The settings file (firmware/settings.py reads it at boot; firmware/cmd_handler.py writes it for
# an accepted command, through here, so the command path does not load settings.py's boot code).
SETTINGS_VERSION = 1


def save_settings(path, cfg, ctr, base):
    """The config in force, the last HMAC counter and the commissioned config they were made on."""
    save(path, {'v': SETTINGS_VERSION, 'config': cfg, 'ctr': ctr, 'base': base})


def _read(path):
    with open(path, 'rb') as f:
        raw = f.read()
    lines = raw.split(b'\n')
    if len(lines) < 2 or not lines[0]:
        raise ValueError('truncated (no checksum line)')
    if lines[1].strip() != _digest(lines[0]):
        raise ValueError('checksum mismatch (corrupt)')
    try:
        return json.loads(lines[0])
    except MemoryError:                 # not a damaged file: the saved settings must not be dropped
        raise
    except Exception:
        raise ValueError('not JSON (corrupt)')


def load(path):
    """Return (obj, None), or (None, message) if the file is missing or damaged."""
    try:
        return _read(path), None
    except OSError:
        err = '%s: missing' % path
    except ValueError as e:
        err = '%s: %s' % (path, e)
    # interrupted save on FAT: the complete new file is still in .tmp
    tmp = path + '.tmp'
    if _exists(tmp):
        try:
            obj = _read(tmp)
        except (OSError, ValueError):
            return None, err
        try:
            os.rename(tmp, path)
        except OSError:
            pass
        return obj, None
    return None, err
