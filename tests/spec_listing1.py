"""Literal, per-problem transcription of Listing 1 of the DMM-Net supplement.

Kept in the tests (and used by the CPU benchmark as the "specification loop" baseline) to hold
the batched reference to. Only changes from the printed listing: helper tensors take X's
dtype and device, and the column mask is cast to X's dtype, so that it also runs in float64.
"""

import torch
import torch.nn.functional as F


def project_row(X):
    """p(X) = X - 1/m (X 1_m - 1_n) 1_m^T ; X shape n x m"""
    X_row_sum = X.sum(dim=1, keepdim=True)  # n x 1
    one_m = torch.ones(1, X.shape[1], dtype=X.dtype, device=X.device)  # 1 x m
    return X - (X_row_sum - 1).mm(one_m) / X.shape[1]


def project_col(X):
    """p(X) = X if X^T 1_n <= 1_m else X - 1/n 1_n (1_n^T X - 1_m^T) ; per column"""
    X_col_sum = X.sum(dim=0, keepdim=True)  # 1 x m
    one_n = torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)  # n x 1
    mask = (X_col_sum <= 1).to(X.dtype)
    P = X - (one_n).mm(X_col_sum - 1) / X.shape[0]
    return X * mask + (1 - mask) * P


def relax_matching(C, X_init, max_iter, proj_iter, lr):
    X = X_init
    P = [torch.zeros_like(C) for _ in range(3)]
    X_list = [X_init]
    for _i in range(max_iter):
        X = X - lr * C  # gradient step
        for _j in range(proj_iter):  # Dykstra's cyclic projections
            X = X + P[0]
            Y = project_row(X)
            P[0] = X - Y
            X = Y + P[1]
            Y = project_col(X)
            P[1] = X - Y
            X = Y + P[2]
            Y = F.relu(X)
            P[2] = X - Y
            X = Y
        X_list += [X]
    return torch.stack(X_list, dim=0).mean(dim=0)
