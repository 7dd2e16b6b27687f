"""A PyTorch + MONAI S2DC pretraining step, written for the benchmark only.

Same shapes and losses as the JAX step (docs/method.md sections 1-3): MONAI SwinTransformer
student and EMA teacher, the two heads, in-plane affine views with trilinear
``grid_sample``, ground truth from the affines, Sinkhorn or dual-softmax matching, the
Sharpe term and InfoNCE with a queue, AdamW. Batched, no Python loops over crops or
slices, so the comparison is with a fair PyTorch implementation rather than the
reference's loops. Not used for training.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn


def _head(d_in, hidden, d_out):
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden, affine=False), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden, affine=False), nn.ReLU(),
                         nn.Linear(hidden, d_out))


class Net(nn.Module):
    """Encoder + patch head + global head."""

    def __init__(self, m, ssl):
        super().__init__()
        w, p = m.window_size, m.patch_size
        self.encoder = SwinTransformer(
            in_chans=m.in_channels, embed_dim=m.feature_size, window_size=(w,) * 3, patch_size=(p,) * 3,
            depths=tuple(m.depths), num_heads=tuple(m.num_heads), use_v2=m.use_v2, use_checkpoint=m.remat)
        feat = m.feature_size * 16
        self.patch_head = _head(feat, ssl.head_hidden, ssl.head_dim)
        self.global_head = _head(feat, ssl.head_hidden, ssl.head_dim)

    def features(self, x):  # [N, C, c, c, c] -> [N, F, t, t, t]
        return self.encoder(x, normalize=True)[-1]


def _warp(x, affine):
    """In-plane affine of content (view_params.py convention) on x [N, C, X, Y, Z], zero padding."""
    n, _, sx, sy, sz = x.shape
    ang, s, tx, ty = affine.unbind(-1)
    dev = x.device
    gx, gy, gz = torch.meshgrid(torch.arange(sx, device=dev), torch.arange(sy, device=dev),
                                torch.arange(sz, device=dev), indexing="ij")
    cx, cy = (sx - 1) / 2, (sy - 1) / 2
    qx = gx[None].float() - cx - tx[:, None, None, None]
    qy = gy[None].float() - cy - ty[:, None, None, None]
    cos, sin = torch.cos(ang)[:, None, None, None], torch.sin(ang)[:, None, None, None]
    px = (cos * qx + sin * qy) / s[:, None, None, None] + cx     # R^T (q - c - t) / s + c
    py = (-sin * qx + cos * qy) / s[:, None, None, None] + cy
    pz = gz[None].float().expand_as(px)
    # grid_sample's last axis is (W, H, D) = (Z, Y, X), normalised with align_corners=True
    grid = torch.stack([2 * pz / (sz - 1) - 1, 2 * py / (sy - 1) - 1, 2 * px / (sx - 1) - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _crops(roi, c):  # [B, C, X, Y, Z] -> [B*n, C, c, c, c], crop k = i * (Y/c) + j
    b, ch, x, y, z = roi.shape
    r = roi.reshape(b, ch, x // c, c, y // c, c, z).permute(0, 2, 4, 1, 3, 5, 6)
    return r.reshape(-1, ch, c, c, z)


def _token_grid(feat, b, gx, gy):  # [B*n, F, t, t, tz] -> [B, tz, gx*t * gy*t, F]
    _, f, t, _, tz = feat.shape
    g = feat.reshape(b, gx, gy, f, t, t, tz).permute(0, 6, 1, 4, 2, 5, 3)
    return g.reshape(b, tz, gx * t * gy * t, f)


def _ground_truth(affine, nx, ny, token):
    """gt[B, nx*ny, nx*ny]: mutual in-plane token correspondence under the exact inverse."""
    dev = affine.device
    ix, iy = torch.meshgrid(torch.arange(nx, device=dev), torch.arange(ny, device=dev), indexing="ij")
    cx, cy = nx * token / 2, ny * token / 2
    px, py = (ix.flatten() + 0.5) * token - cx, (iy.flatten() + 0.5) * token - cy
    ang, s, tx, ty = [a[:, None] for a in affine.unbind(-1)]
    fx = s * (torch.cos(ang) * px - torch.sin(ang) * py) + tx + cx
    fy = s * (torch.sin(ang) * px + torch.cos(ang) * py) + ty + cy
    jx, jy = torch.floor(fx / token), torch.floor(fy / token)
    inside = (jx >= 0) & (jx < nx) & (jy >= 0) & (jy < ny)
    qx, qy = (jx + 0.5) * token - cx - tx, (jy + 0.5) * token - cy - ty
    bx = (torch.cos(ang) * qx + torch.sin(ang) * qy) / s + cx
    by = (-torch.sin(ang) * qx + torch.cos(ang) * qy) / s + cy
    back = (torch.floor(bx / token) == ix.flatten()) & (torch.floor(by / token) == iy.flatten())
    ok = inside & back
    tgt = (jx.clamp(0, nx - 1) * ny + jy.clamp(0, ny - 1)).long()
    gt = torch.zeros(affine.shape[0], nx * ny, nx * ny, device=dev)
    gt.scatter_(2, tgt[..., None], ok[..., None].float())
    return gt


def _sinkhorn(scores, bin_score, iters):
    b, m, n = scores.shape
    bins_c = torch.full((b, m, 1), bin_score, device=scores.device)
    bins_r = torch.full((b, 1, n + 1), bin_score, device=scores.device)
    z = torch.cat([torch.cat([scores, bins_c], 2), bins_r], 1)
    norm = -math.log(m + n)
    log_mu = torch.cat([torch.full((m,), norm), torch.tensor([math.log(n) + norm])]).to(scores.device)
    log_nu = torch.cat([torch.full((n,), norm), torch.tensor([math.log(m) + norm])]).to(scores.device)
    u, v = torch.zeros_like(log_mu).expand(b, -1), torch.zeros_like(log_nu).expand(b, -1)
    for _ in range(iters):
        u = log_mu - torch.logsumexp(z + v[:, None, :], 2)
        v = log_nu - torch.logsumexp(z + u[:, :, None], 1)
    return (z + u[:, :, None] + v[:, None, :] - norm)[:, :m, :n].exp()


def _match_loss(p, gt):
    p = p.clamp(1e-6, 1 - 1e-6)
    pos, neg = gt > 0, gt == 0
    lp = (-(p.log()) * pos).sum((1, 2)) / pos.sum((1, 2)).clamp(min=1)
    ln = (-(1 - p).log() * neg).sum((1, 2)) / neg.sum((1, 2)).clamp(min=1)
    return (lp + ln).mean()


def _sharpe_loss(cos, gt):
    a = ((1 + cos) / 2).clamp(1e-6, 1 - 1e-6)
    with torch.no_grad():
        sr_c = (cos.max(1).values - cos.mean(1)) / (cos.std(1) + 1e-6)
        sr_r = (cos.max(2).values - cos.mean(2)) / (cos.std(2) + 1e-6)
        wc, wr = sr_c.softmax(-1)[:, None, :], sr_r.softmax(-1)[:, :, None]
    pos, neg = gt > 0, gt == 0
    lpos = ((-a.log() * wc * pos).sum((1, 2)) + (-a.log() * wr * pos).sum((1, 2))) / 2
    lneg = (-(1 - a).log() * neg).sum((1, 2)) / neg.sum((1, 2)).clamp(min=1)
    return (lpos + lneg).mean()


class TorchS2DC:
    """One pretraining step on ``device``; ``step(batch)`` takes the same numpy batch as the JAX step."""

    def __init__(self, config, device):
        self.c, self.dev = config, torch.device(device)
        self.student = Net(config.model, config.ssl).to(self.dev)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        o = config.optim
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=o.lr, betas=(o.b1, o.b2),
                                     weight_decay=o.weight_decay)
        self.queue = F.normalize(torch.randn(config.ssl.queue_size, config.ssl.head_dim, device=self.dev), dim=1)
        self.ptr = 0

    def _patch(self, net, feat, b, gx, gy):
        tok = _token_grid(feat, b, gx, gy)                   # [B, tz, T, F]
        emb = net.patch_head(tok.reshape(-1, tok.shape[-1]).float())  # BN over all tokens
        return F.normalize(emb.reshape(*tok.shape[:-1], -1), dim=-1)

    def step(self, batch) -> float:
        c, s = self.c, self.c.ssl
        crop = c.data.crop_size
        with torch.no_grad():                               # EMA before the step
            for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
                pt.mul_(s.ema_momentum).add_(ps, alpha=1 - s.ema_momentum)
        t = lambda k: torch.as_tensor(batch[k], device=self.dev)  # noqa: E731
        roi = t("image").permute(0, 4, 1, 2, 3)               # [B, 1, X, Y, Z]
        b, _, x, y, _ = roi.shape
        gx, gy = x // crop, y // crop
        n = gx * gy
        src = _crops(roi, crop)
        aug_full = _crops(_warp(roi, t("full_affine")) + t("full_shift")[:, None, None, None, None], crop)
        aug_crop = _warp(src, t("crop_affine").reshape(-1, 4)) + t("crop_shift").reshape(-1, 1, 1, 1, 1)
        j = t("global_index").long() + torch.arange(b, device=self.dev) * n
        tok = crop // 32
        gt = _ground_truth(t("full_affine"), gx * tok, gy * tok, 32.0)

        with torch.no_grad():
            f_full = self.teacher.features(aug_full)
            k_patch = self._patch(self.teacher, f_full, b, gx, gy)
            # one teacher pass over the aug_crop crops and each volume's key crop src[j]
            pooled = self.teacher.features(torch.cat([aug_crop, src[j]])).mean((2, 3, 4))
            k_all = F.normalize(self.teacher.global_head(pooled), dim=-1)
            k_crop, k_src = k_all[:b * n], k_all[b * n:]
        f_src = self.student.features(src)
        q_patch = self._patch(self.student, f_src, b, gx, gy)
        q_glob = F.normalize(self.student.global_head(f_src.mean((2, 3, 4))), dim=-1)[j]

        cos = q_patch @ k_patch.transpose(-1, -2) / s.temperature   # [B, tz, T, T]
        cos2 = cos.reshape(-1, *cos.shape[-2:])
        gt2 = gt[:, None].expand(-1, cos.shape[1], -1, -1).reshape(cos2.shape)
        if s.match == "sinkhorn":
            plan = _sinkhorn(cos2, s.bin_score, s.sinkhorn_iters)
        else:
            plan = cos2.softmax(1) * cos2.softmax(2)
        l_p2p = _match_loss(plan, gt2)
        l_p2s = _sharpe_loss((q_patch @ k_patch.transpose(-1, -2)).reshape(cos2.shape), gt2)
        pos = (q_glob * k_crop[j]).sum(-1, keepdim=True)
        mask = torch.ones(b, b * n, dtype=torch.bool, device=self.dev)
        mask[torch.arange(b), j] = False
        neg = torch.cat([(q_glob @ k_crop.T).masked_fill(~mask, -1e9), q_glob @ self.queue.T], 1)
        logits = torch.cat([pos, neg], 1) / s.global_temperature
        l_glob = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=self.dev))
        loss = s.w_p2p * l_p2p + s.w_p2s * l_p2s + s.w_global * l_glob
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        k = self.queue.shape[0]
        idx = (self.ptr + torch.arange(b, device=self.dev)) % k
        self.queue[idx] = k_src.detach()[:k]
        self.ptr = (self.ptr + b) % k
        return loss
