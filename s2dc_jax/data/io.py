"""NIfTI reading with nibabel: headers, RAS reorientation, channels, errors that name the file.

Arrays are returned in RAS voxel order (first axis points Right, then Anterior, then
Superior), the spatial axis order MONAI's ``Orientation(axcodes="RAS")`` produces.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import zlib

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class DataError(ValueError):
    """A volume or datalist that cannot be used; the message starts with its path."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def is_nifti_name(path) -> bool:
    """True for names ending in .nii or .nii.gz."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class VolumeInfo:
    """Header facts of one volume, in RAS order."""

    path: str
    shape: tuple[int, int, int]      # spatial shape after reorientation to RAS
    channels: int                    # 1 for a 3D volume, C for 4D (X,Y,Z,C) or 5D (X,Y,Z,1,C)
    spacing: tuple[float, float, float]  # mm per voxel along the RAS array axes
    affine: np.ndarray               # f64[4, 4] voxel (RAS array order) -> world (RAS mm)
    orientation: str                 # axis codes of the file as stored, e.g. "LPS"
    dtype: str                       # on-disk dtype (before scl_slope / scl_inter)


def _open(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(path, "file not found")
    if os.path.isdir(path):
        raise DataError(path, "is a directory, expected a NIfTI file")
    try:
        img = nib.load(path)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error,
            gzip.BadGzipFile, ValueError, IndexError) as e:
        raise DataError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _layout(path, shape) -> int:
    """Number of channels implied by a header shape; errors on anything that is not a volume."""
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise DataError(path, f"empty dimension in shape {shape}")
    if len(shape) < 3:
        raise DataError(path, f"{len(shape)}D array of shape {shape}, expected a 3D volume")
    if len(shape) == 3:
        return 1
    if len(shape) == 4:
        return shape[3]
    if len(shape) == 5 and shape[3] == 1:
        return shape[4]  # NIfTI vector convention: (X, Y, Z, t=1, components)
    raise DataError(path, f"{len(shape)}D array of shape {shape}, expected 3D (X, Y, Z) or "
                          "4D (X, Y, Z, C) / 5D (X, Y, Z, 1, C) channels")


def _ras_ornt(path, affine):
    ornt = nib.orientations.io_orientation(affine)
    if not np.all(np.isfinite(ornt)):
        raise DataError(path, "degenerate affine (cannot tell the orientation)")
    return ornt


def _info(path, img) -> tuple[VolumeInfo, np.ndarray]:
    shape = img.shape
    channels = _layout(path, shape)
    affine = np.asarray(img.affine, np.float64)
    if not np.all(np.isfinite(affine)):
        raise DataError(path, "affine contains NaN or inf")
    ornt = _ras_ornt(path, affine)
    spatial = tuple(int(s) for s in shape[:3])
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, spatial)
    ras_shape = tuple(spatial[int(a)] for a in np.argsort(ornt[:, 0]))
    spacing = tuple(float(s) for s in np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0)))
    info = VolumeInfo(path=str(path), shape=ras_shape, channels=int(channels), spacing=spacing,
                      affine=ras_affine, orientation="".join(nib.aff2axcodes(affine)),
                      dtype=str(img.get_data_dtype()))
    return info, ornt


def read_header(path) -> VolumeInfo:
    """Header-only facts (RAS shape, channels, spacing) of a NIfTI file; DataError if unusable."""
    img = _open(path)
    info, _ = _info(path, img)
    if str(path).lower().endswith(".nii"):
        # Uncompressed files can be checked for truncation from their size alone.
        hdr = img.header
        need = int(hdr.get_data_offset()) + int(np.prod(img.shape)) * hdr.get_data_dtype().itemsize
        have = os.path.getsize(path)
        if have < need:
            raise DataError(path, f"truncated: {have} bytes, the header needs {need}")
    return info


@dataclasses.dataclass
class RawVolume:
    """On-disk voxels in RAS order, unscaled: physical value = raw * slope + inter."""

    data: np.ndarray   # [X, Y, Z] or [X, Y, Z, C]; a memory map (view) for uncompressed files
    slope: float
    inter: float
    info: VolumeInfo


_GZIP_MAGIC = b"\x1f\x8b"


def _gzip_error(path, why, size) -> DataError:
    return DataError(path, f"corrupt or truncated: {why} ({size} bytes on disk)")


def read_verified_bytes(path) -> bytes:
    """The whole decompressed stream of a ``.nii.gz``, every member's CRC32 and length checked."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        comp = f.read()
    if comp[:2] != _GZIP_MAGIC:
        raise DataError(path, "not a gzip file, though named .nii.gz")
    parts, rest = [], comp
    while rest:
        # wbits=31: zlib parses the gzip wrapper and compares each member's trailer (CRC32
        # and size) with what it inflated; nibabel stops after the voxel bytes and never
        # reads the trailer, so a cut or bit-flipped file can load without an error.
        d = zlib.decompressobj(wbits=31)
        try:
            parts.append(d.decompress(rest))
        except zlib.error as e:
            msg = str(e)
            why = ("gzip CRC check failed (the decompressed bytes are not the ones written)"
                   if "incorrect data check" in msg else
                   "gzip length check failed (the decompressed size is not the one written)"
                   if "incorrect length check" in msg else f"zlib.error: {msg}")
            raise _gzip_error(path, why, len(comp)) from None
        if not d.eof:
            raise _gzip_error(path, "the gzip stream ends before its end-of-stream marker",
                              len(comp))
        rest = d.unused_data.lstrip(b"\x00")  # some writers pad with zeros after a member
        if rest and rest[:2] != _GZIP_MAGIC:
            raise _gzip_error(path, f"{len(rest)} bytes after the end of the gzip stream are "
                                    "not gzip", len(comp))
    return b"".join(parts)


def _open_verified(path):
    """(image, unscaled voxels) of a ``.nii.gz`` read whole and checked, voxels without a copy."""
    raw = read_verified_bytes(path)
    size = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
    if size not in (348, 540):
        size = int.from_bytes(raw[:4], "big")
    klass = {348: nib.Nifti1Image, 540: nib.Nifti2Image}.get(size)
    if klass is None:
        raise DataError(path, "not a readable NIfTI file (decompressed data has no NIfTI header)")
    try:
        img = klass.from_bytes(raw)
    except (nib.filebasedimages.ImageFileError, ValueError, EOFError, OSError) as e:
        raise DataError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    p = img.dataobj
    count = int(np.prod(p.shape))
    need = int(p.offset) + count * p.dtype.itemsize
    if len(raw) < need:
        raise DataError(path, f"cannot read voxel data, corrupt or truncated (the gzip stream "
                              f"holds {len(raw)} bytes, the header needs {need})")
    # A view of the decompressed bytes: nibabel's own read would copy them once more.
    data = np.frombuffer(raw, p.dtype, count, int(p.offset)).reshape(p.shape, order=p.order)
    return img, data


def open_raw(path, *, mmap: bool = True, verify_stream: bool = False) -> RawVolume:
    """RAS view of the unscaled voxels; for ``.nii`` this maps the file instead of reading it.

    ``verify_stream`` reads a ``.nii.gz`` to the end of its gzip stream and checks the CRC
    (a truncated or bit-flipped file is a DataError); the voxels then come from memory.
    """
    raw = None
    if verify_stream and os.fspath(path).lower().endswith(".nii.gz"):
        _open(path)  # the usual "file not found" / "not a readable NIfTI" messages first
        img, raw = _open_verified(path)
    else:
        img = _open(path) if mmap else nib.load(os.fspath(path), mmap=False)
    info, ornt = _info(path, img)
    proxy = img.dataobj
    try:
        raw = np.asanyarray(proxy.get_unscaled()) if raw is None else raw
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise DataError(path, f"cannot read voxel data, corrupt or truncated "
                              f"({type(e).__name__}: {e})") from None
    if raw.dtype.kind not in "iuf":
        raise DataError(path, f"unsupported voxel type {raw.dtype}, expected integers or floats")
    x, y, z = raw.shape[:3]
    raw = raw.reshape(x, y, z, info.channels) if raw.ndim > 3 else raw
    raw = nib.orientations.apply_orientation(raw, ornt)  # flips/transposes: views, no copy
    slope = getattr(proxy, "slope", 1.0)
    inter = getattr(proxy, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return RawVolume(raw, slope, inter, info)


def load_volume(path, *, channels: bool = False, dtype=np.float32,
                allow_nonfinite: bool = False) -> tuple[np.ndarray, dict]:
    """Whole volume in RAS order as ``f32[X, Y, Z]`` (or ``f32[X, Y, Z, C]`` with channels=True).

    Returns ``(array, meta)`` with meta keys ``affine`` (RAS array order -> world mm),
    ``spacing``, ``orientation`` (as stored), ``path``. A multi-channel file without
    ``channels=True``, NaN/inf voxels (unless allowed) and unreadable files raise DataError.
    """
    raw = open_raw(path)
    c = raw.info.channels
    if c > 1 and not channels:
        raise DataError(path, f"has {c} channels (4D/5D image); pass channels=True to load "
                              "them as f32[X, Y, Z, C], or split the modalities into files")
    try:
        arr = np.asarray(raw.data, dtype=dtype)
    except (EOFError, OSError, zlib.error, ValueError) as e:
        raise DataError(path, f"cannot read voxel data ({type(e).__name__}: {e})") from None
    if raw.slope != 1.0 or raw.inter != 0.0:
        arr = arr * dtype(raw.slope) + dtype(raw.inter)
    if channels and arr.ndim == 3:
        arr = arr[..., None]
    elif not channels and arr.ndim == 4:
        arr = arr[..., 0]
    if not allow_nonfinite and arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise DataError(path, f"{bad} NaN/inf voxels")
    arr = np.ascontiguousarray(arr)
    info = raw.info
    meta = {"path": info.path, "affine": info.affine, "spacing": info.spacing,
            "orientation": info.orientation, "shape": info.shape}
    return arr, meta


def save_volume(path, array: np.ndarray, *, spacing=(1.0, 1.0, 1.0), orientation: str = "RAS",
                dtype=None) -> str:
    """Write ``array`` (given in RAS order) as NIfTI stored in ``orientation``; returns the path."""
    array = np.asarray(array)
    if dtype is not None:
        array = array.astype(dtype)
    ras_affine = np.diag([*map(float, spacing), 1.0])
    target = nib.orientations.axcodes2ornt(tuple(orientation))
    # ``target`` maps RAS array axes to the stored ones; apply it to the voxels and the affine.
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    tf = nib.orientations.ornt_transform(ras, target)
    stored = nib.orientations.apply_orientation(array, tf)
    affine = ras_affine @ nib.orientations.inv_ornt_aff(tf, array.shape[:3])
    img = nib.Nifti1Image(np.ascontiguousarray(stored), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, os.fspath(path))
    return os.fspath(path)
