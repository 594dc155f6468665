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


def _at(iop=AXIAL, z=0.0, spacing=(0.5, 0.5), matrix=(4, 4)) -> geometry.FrameGeometry:
    iop = np.asarray(iop, dtype=float)
    return geometry.FrameGeometry(np.array([0.0, 0.0, z]), iop[:3], iop[3:], spacing[0], spacing[1], *matrix)


def test_one_same_orientation_and_same_stack_test_with_named_tolerances():
    """Issue 16.3: one comparison of Image Orientation (Patient) (0020,0037), Pixel
    Spacing (0028,0030) and matrix, used by index, CT, SEG and exports."""
    jitter = [1, 5e-4, 0, 0, 1, 0]                        # 5e-4: within a stack, not pixel-aligned
    assert geometry.same_orientation(_at(jitter), _at(), geometry.STACK_ORIENTATION_TOL)
    assert not geometry.same_orientation(_at(jitter), _at())          # ORIENTATION_TOL = 1e-4
    assert list(geometry.same_orientation(np.array([AXIAL, jitter]), AXIAL)) == [True, False]
    assert geometry.same_stack(_at(jitter, z=1.0), _at())
    assert not geometry.same_stack(_at(matrix=(4, 5)), _at())
    assert not geometry.same_stack(_at(spacing=(0.5, 0.5002)), _at())
    assert geometry.same_stack(_at(spacing=(0.5, 0.5002)), _at(), spacing_tol_mm=None)
    assert geometry.same_spacing(_at(spacing=(0.5, 0.5004)), _at(), tol_mm=0.0, rel_tol=geometry.SPACING_REL_TOL)
    # parallel either way round; 1 - cos(0.5°) < 1e-4 < 1 - cos(1°)
    n = np.array([0.0, 0.0, 1.0])
    assert geometry.parallel(-n, n)
    assert geometry.parallel([0, np.sin(np.radians(0.5)), np.cos(np.radians(0.5))], n)
    assert not geometry.parallel([0, np.sin(np.radians(1.0)), np.cos(np.radians(1.0))], n)
    assert list(geometry.parallel(np.array([n, [0, 1.0, 0]]), n)) == [True, False]


def test_same_grid():
    aff = geometry.grid_affine([1.0, 2.0, 3.0], np.eye(3), [0.5, 0.5, 2.0])
    assert geometry.same_grid(aff, (4, 5, 6), aff + 5e-4, (4, 5, 6, 2))
    assert not geometry.same_grid(aff, (4, 5, 6), aff + 2e-3, (4, 5, 6))
    assert not geometry.same_grid(aff, (4, 5, 6), aff, (4, 5, 7))


def test_sort_stack_orders_once_and_reports():
    frames = [_at(z=z) for z in (2.0, 0.0, 1.0, 3.0)]
    stack = geometry.sort_stack(frames, tiebreak=[4, 1, 2, 3])
    assert list(stack.order) == [1, 2, 0, 3]
    assert [f.position[2] for f in stack.frames] == [0.0, 1.0, 2.0, 3.0]
    assert stack.report.n_slices == 4 and stack.report.spacing == 1.0 and stack.report.regular


def test_frame_affine_is_the_grid_affine_of_the_at():
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    frame = geometry.FrameGeometry(np.array([5.0, -3.0, 4.0]), np.array([1.0, 0, 0]), np.array([0, c, -s]),
                                   0.7, 0.6, 8, 9)
    step = np.array([0.0, 0.3, 1.1])
    aff = geometry.frame_affine_lps(frame, step)
    assert np.array_equal(aff[:3, 0], frame.row_cosine * 0.6) and np.array_equal(aff[:3, 1], frame.column_cosine * 0.7)
    assert np.array_equal(aff[:3, 2], step) and np.array_equal(aff[:3, 3], frame.position)
    assert np.array_equal(aff[3], [0, 0, 0, 1])
