"""geometry.py against hand computations (PS3.3 C.7.6.2.1.1) — no real data needed."""
from __future__ import annotations

import numpy as np
import pytest

from dicomprep import geometry

AXIAL = [1, 0, 0, 0, 1, 0]


def test_slice_normal_and_orientation_label():
    assert np.allclose(geometry.slice_normal(AXIAL), [0, 0, 1])
    assert geometry.orientation_label(AXIAL) == "axial"
    assert geometry.orientation_label([1, 0, 0, 0, 0, -1]) == "coronal"     # normal (0, 1, 0)
    assert geometry.orientation_label([0, 1, 0, 0, 0, -1]) == "sagittal"    # normal (-1, 0, 0)
    c, s = np.cos(np.radians(45)), np.sin(np.radians(45))
    assert geometry.orientation_label([1, 0, 0, 0, c, -s]) == "oblique"     # |n_y| = |n_z| = 0.71
    c, s = np.cos(np.radians(18.5)), np.sin(np.radians(18.5))
    assert geometry.orientation_label([1, 0, 0, 0, c, -s]) == "axial"       # GE tilt 18.5°
    assert geometry.is_axial([1, 0, 0, 0, c, -s])
    assert not geometry.is_axial([1, 0, 0, 0, 0, -1])
    with pytest.raises(ValueError):
        geometry.slice_normal([1, 0, 0, 1, 0, 0])


def test_slice_order_ignores_scrambled_instance_numbers():
    z = np.array([30.0, -10.0, 10.0, 0.0, 20.0])
    positions = np.column_stack([np.zeros(5), np.zeros(5), z])
    order = geometry.slice_order(positions, np.array([0, 0, 1.0]), tiebreak=[5, 1, 4, 2, 3])
    assert list(z[order]) == [-10.0, 0.0, 10.0, 20.0, 30.0]
    # Feet-first normal (0, 0, -1): ascending along the normal is descending z.
    order = geometry.slice_order(positions, np.array([0, 0, -1.0]))
    assert list(z[order]) == [30.0, 20.0, 10.0, 0.0, -10.0]
    # Ties are broken by the tiebreak (e.g. InstanceNumber), not by input order.
    tied = np.array([[0, 0, 5.0], [0, 0, 5.0], [0, 0, 0.0]])
    assert list(geometry.slice_order(tied, np.array([0, 0, 1.0]), tiebreak=[9, 3, 1])) == [2, 1, 0]


def test_stack_report_regular_duplicates_gaps_and_tilt():
    n = np.array([0, 0, 1.0])
    regular = np.column_stack([np.zeros(6), np.zeros(6), np.arange(6) * 2.5])
    rep = geometry.stack_report(regular[::-1], n)
    assert rep.spacing == pytest.approx(2.5) and rep.regular and rep.n_duplicates == 0
    assert rep.n_missing == 0 and rep.tilt_deg == pytest.approx(0, abs=1e-6)

    dup = np.vstack([regular, regular[2:3]])
    rep = geometry.stack_report(dup, n)
    assert rep.n_duplicates == 1 and rep.spacing == pytest.approx(2.5)

    gap = np.delete(regular, [2, 3], axis=0)             # 0, 2.5, [5, 7.5 missing], 10, 12.5
    rep = geometry.stack_report(gap, n)
    assert rep.n_missing == 2 and not rep.regular and rep.spacing == pytest.approx(2.5)

    # Tilt: positions step along z, the slice normal is tilted 18.5° about x.
    c, s = np.cos(np.radians(18.5)), np.sin(np.radians(18.5))
    normal = geometry.slice_normal([1, 0, 0, 0, c, -s])
    rep = geometry.stack_report(regular, normal)
    assert rep.tilted and rep.tilt_deg == pytest.approx(18.5, abs=1e-6)
    assert rep.spacing == pytest.approx(2.5 * c)          # gap measured along the normal


def _frame(ipp, iop, ps=(0.8, 0.6), rows=10, cols=12):
    return geometry.frame_geometry_from_values(ipp, iop, list(ps), rows, cols)


def test_volume_affine_matches_ps33_equation_by_hand():
    iop = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]                  # sagittal: rows along +y, columns along -z
    ps = (0.8, 0.6)                                      # row spacing, column spacing
    frames = [_frame([10.0 + 3.0 * k, -20.0, 40.0], iop, ps) for k in range(4)]
    aff = geometry.volume_affine(frames, ras=False)
    for (i, j, k) in [(0, 0, 0), (5, 7, 2), (11, 9, 3)]:
        # PS3.3 C.7.6.2.1.1: P = IPP + X * column_spacing * c + Y * row_spacing * r, c = i, r = j
        ipp = np.array([10.0 + 3.0 * k, -20.0, 40.0])
        hand = ipp + np.array([0, 1.0, 0]) * 0.6 * i + np.array([0, 0, -1.0]) * 0.8 * j
        assert np.allclose(geometry.voxel_to_world(aff, [i, j, k])[0], hand)
        ras = geometry.voxel_to_world(geometry.volume_affine(frames), [i, j, k])[0]
        assert np.allclose(ras, hand * [-1, -1, 1])
        assert np.allclose(geometry.world_to_voxel(aff, hand)[0], [i, j, k])
        assert np.allclose(geometry.pixel_to_patient_lps(frames[k], j, i), hand)


def test_stack_volume_indexing():
    frames = [np.arange(6).reshape(2, 3) + 10 * k for k in range(4)]   # [row, column]
    vol = geometry.stack_volume(frames)
    assert vol.shape == (3, 2, 4)
    assert vol[2, 1, 3] == frames[3][1, 2]


def test_stack_offsets_and_orthonormal_frame():
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    iop = [1, 0, 0, 0, c, -s]
    frames = [_frame([5.0, -3.0, 4.0 * k], iop) for k in range(3)]
    along, in_plane = geometry.stack_offsets(frames)
    normal = np.array([0, s, c])
    assert np.allclose(along, [np.dot([5.0, -3.0, 4.0 * k], normal) for k in range(3)])
    # a z step of 4 mm lies -4 sin(20°) along the column cosine, 0 along the row cosine
    assert np.allclose(in_plane, [[0, -4.0 * s * k] for k in range(3)])
    frame = geometry.orthonormal_frame([1, 0, 0], [0.001, 1, 0])
    assert np.allclose(frame.T @ frame, np.eye(3))


def test_grid_affine():
    axes = np.eye(3)
    aff = geometry.grid_affine([1.0, 2.0, 3.0], axes, [0.5, 0.5, 2.0])
    assert np.allclose(geometry.voxel_to_world(aff, [2, 4, 1])[0], [-(1.0 + 1.0), -(2.0 + 2.0), 3.0 + 2.0])


def test_missing_slices_only_for_whole_multiples_of_the_spacing():
    from dicomprep.geometry import stack_report

    normal = np.array([0.0, 0.0, 1.0])
    stack = lambda zs: np.array([[0.0, 0.0, z] for z in zs])  # noqa: E731
    assert stack_report(stack([0, 1, 2, 4, 5]), normal).n_missing == 1          # one slice gone
    assert stack_report(stack([0, 1, 2, 3, 6, 7]), normal).n_missing == 2
    mixed = stack_report(stack([0, 1, 2, 3, 5.5, 6.5]), normal)                 # acquired so
    assert mixed.n_missing == 0 and not mixed.regular
