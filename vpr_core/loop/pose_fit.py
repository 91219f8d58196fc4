"""Least-squares tools shared by the relative pose fits (PnP and essential matrix): projection,
numerical Jacobian, the first-order covariance and the left rotation perturbation that the
covariance convention of ``relative_pose`` is defined by."""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

_JACOBIAN_STEP = 1e-6
# RANSAC judges inliers by a minimal-sample model: refine and re-select at most this many times.
REFINE_ROUNDS = 4


def homogeneous(normalized: np.ndarray) -> np.ndarray:
    return np.concatenate([normalized, np.ones((normalized.shape[0], 1))], axis=1)


def project(points: np.ndarray, focal: np.ndarray) -> np.ndarray:
    """Normalized coordinates, in pixel units, of 3-D points [N, 2] (behind the camera: huge)."""
    z = points[:, 2:3]
    safe = np.where(z > 1e-9, z, 1e-9)
    return points[:, :2] / safe * focal


def jacobian(residual: Callable[[np.ndarray], np.ndarray], n_params: int) -> np.ndarray:
    """Central differences: the residuals are cheap, and an analytic Jacobian per model would be
    more code to get wrong than the first-order covariance is worth."""
    columns = []
    for k in range(n_params):
        step = np.zeros(n_params)
        step[k] = _JACOBIAN_STEP
        columns.append((residual(step) - residual(-step)) / (2 * _JACOBIAN_STEP))
    return np.stack(columns, axis=1)


def parameter_covariance(
    residual: Callable[[np.ndarray], np.ndarray], n_params: int, min_sigma_px: float
) -> np.ndarray | None:
    """σ² (JᵀJ)⁻¹ at the estimate (zero perturbation); None when the parameters are not observable."""
    r0 = residual(np.zeros(n_params))
    dof = r0.size - n_params
    if dof <= 0:
        return None
    jac = jacobian(residual, n_params)
    information = jac.T @ jac
    if np.linalg.cond(information) > 1e12:
        return None
    sigma2 = max(float(r0 @ r0) / dof, min_sigma_px**2)
    return sigma2 * np.linalg.inv(information)


def rotate(rotation: np.ndarray, dtheta: np.ndarray) -> np.ndarray:
    """Left perturbation exp([dθ]x) R: dθ is in the match frame, as the covariance is."""
    return cv2.Rodrigues(np.asarray(dtheta, np.float64))[0] @ rotation


def symmetric(covariance: np.ndarray) -> np.ndarray:
    return (covariance + covariance.T) / 2


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
