"""Times PyTorch eager (CPU) on the MCN multi-task network that `mustard::Config::preset(Full)`
builds with the detection, segmentation and pose heads, for the side-by-side comparison of
`cargo xtask bench` (the mustard side is `crates/mustard/examples/mcn_speed.rs`).

The architecture mirrors the Rust code layer by layer:
- ResNet-18, torchvision layout (stem conv7x7/s2 + BN + ReLU + maxpool 3x3/s2, BasicBlocks),
  no classifier (`crates/mustard-backbone/src/resnet.rs`);
- FPN with 128 channels (`crates/mustard-backbone/src/neck.rs`): lateral 1x1 convs (bias),
  top-down nearest x2 + add, 3x3 output convs (bias) -> P2..P5; the fused stride-4 map sums,
  per level k = 0..3, P_{k+2} through max(1, k) stages of [3x3 conv (no bias) -> BN -> ReLU
  (-> bilinear x2, align_corners=False, for k > 0)];
- heads on the fused map (`crates/mustard-heads`), each block Conv3x3(128 -> 64, bias) -> ReLU
  -> Conv1x1(64 -> n): detection hm 4 (the synthetic classes), wh 2, reg 2; pose hm 1, wh 2,
  reg 2, hps 34, hm_hp 17, hp_offset 2; segmentation 5 classes (4 + background), upsampled
  bilinearly x4 to the input size.

The training step is forward, losses, backward, `clip_grad_norm_(10)` and AdamW (lr 5e-4,
weight decay 1e-4 except on biases and 1-D parameters), as mustard's training loop does. The
losses are the ones of mustard (SPEC §2, §4) on random targets of the right shapes:
penalty-reduced focal loss on the heatmaps, masked L1 at 32 random object positions per image
for wh (x0.1), reg, hps and hp_offset, pixel cross-entropy with ignore index 255 for
segmentation.

Each case runs in its own process so that the peak resident memory (`ru_maxrss`) is that case's.
Prints one JSON line per case.

    python bench/mcn_speed.py --case forward --threads 2 --iterations 5

`--batch N` and `--size S` change the input (defaults: 1x512 forward, 8x256 training step);
`--device cuda` runs on the GPU: every phase then waits for the device
(`torch.cuda.synchronize`) before its timer is read, and `device_memory_mib` is
`torch.cuda.max_memory_allocated`.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

FPN_CHANNELS = 128
HEAD_CONV = 64
CLASSES = 4  # mustard_data::synth::CATEGORIES
JOINTS = 17
DET_OBJECTS = 128  # DetectionConfig::new: max_objects
POSE_OBJECTS = 32  # PoseConfig::new: max_objects


def conv_bn(cin, cout, k, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(y + s)


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for i, cout in enumerate([64, 128, 256, 512]):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
            )
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = [64, 128, 256, 512]

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


class Fpn(nn.Module):
    def __init__(self, in_channels, d):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(d, d, 3, 1, 1) for _ in in_channels)
        self.fuse = nn.ModuleList(
            nn.ModuleList(conv_bn(d, d, 3, 1) for _ in range(max(1, level)))
            for level in range(4)
        )

    def forward(self, c):
        inner = self.lateral[3](c[3])
        outs = [self.output[3](inner)]
        for i in (2, 1, 0):
            inner = self.lateral[i](c[i]) + F.interpolate(
                inner, scale_factor=2, mode="nearest"
            )
            outs.append(self.output[i](inner))
        outs.reverse()
        total = None
        for level, stages in enumerate(self.fuse):
            x = outs[level]
            for stage in stages:
                x = F.relu(stage(x))
                if level > 0:
                    h, w = x.shape[-2:]
                    x = F.interpolate(
                        x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False
                    )
            total = x if total is None else total + x
        return total


def head(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, HEAD_CONV, 3, 1, 1), nn.ReLU(), nn.Conv2d(HEAD_CONV, cout, 1)
    )


class Mcn(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ResNet18()
        self.neck = Fpn(self.backbone.out_channels, FPN_CHANNELS)
        d = FPN_CHANNELS
        self.det = nn.ModuleDict(
            {"hm": head(d, CLASSES), "wh": head(d, 2), "reg": head(d, 2)}
        )
        self.pose = nn.ModuleDict(
            {
                "hm": head(d, 1),
                "wh": head(d, 2),
                "reg": head(d, 2),
                "hps": head(d, 2 * JOINTS),
                "hm_hp": head(d, JOINTS),
                "hp_offset": head(d, 2),
            }
        )
        self.seg = head(d, CLASSES + 1)
        # SPEC §2: heatmap heads' last bias -2.19, regression heads N(0, 0.001), bias 0.
        for heads in (self.det, self.pose):
            for name, h in heads.items():
                if name.startswith("hm"):
                    nn.init.constant_(h[2].bias, -2.19)
                else:
                    for conv in (h[0], h[2]):
                        nn.init.normal_(conv.weight, 0.0, 0.001)
                        nn.init.zeros_(conv.bias)

    def forward(self, x):
        dense = self.neck(self.backbone(x))
        det = {k: h(dense) for k, h in self.det.items()}
        pose = {k: h(dense) for k, h in self.pose.items()}
        seg = F.interpolate(
            self.seg(dense), scale_factor=4, mode="bilinear", align_corners=False
        )
        return det, pose, seg


def focal_loss(logits, target):
    """SPEC §4, computed as mustard_core::loss::focal_loss does."""
    # The f32 logarithms as Python numbers (exact in f32), usable on any device.
    lo, hi = float(torch.log(torch.tensor(1e-4))), float(torch.log(torch.tensor(1 - 1e-4)))
    log_p = F.logsigmoid(logits).clamp(lo, hi)
    log_1mp = F.logsigmoid(-logits).clamp(lo, hi)
    p = log_p.exp()
    pos = target.eq(1).float()
    neg = target.lt(1).float()
    pos_loss = (log_p * (1 - p) ** 2 * pos).sum()
    neg_loss = (log_1mp * p**2 * (1 - target) ** 4 * neg).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def gather(pred, ind):
    b, c = pred.shape[:2]
    flat = pred.flatten(2).transpose(1, 2)  # (B, HW, C)
    return flat.gather(1, ind.unsqueeze(2).expand(b, ind.shape[1], c))


def reg_l1(pred, ind, mask, target):
    m = mask.unsqueeze(2).expand_as(target)
    return (gather(pred, ind) - target).abs().mul(m).sum() / (m.sum() + 1e-4)


def random_targets(b, size, gen):
    """Targets of the right shapes: sparse heatmaps with a peak of 1 per object (and per joint),
    8 objects per image (of 128 / 32 slots), random sizes, offsets and joints, label maps with a
    few ignored pixels."""
    h = w = size // 4

    def det(classes, k):
        hm = torch.rand(b, classes, h, w, generator=gen) ** 16
        ind = torch.randint(0, h * w, (b, k), generator=gen)
        mask = torch.zeros(b, k)
        mask[:, :8] = 1
        for i in range(b):
            for j in range(8):
                cls = int(torch.randint(0, classes, (1,), generator=gen))
                hm[i, cls].view(-1)[ind[i, j]] = 1.0
        wh = torch.rand(b, k, 2, generator=gen) * 16
        reg = torch.rand(b, k, 2, generator=gen)
        return hm, ind, mask, wh, reg

    t = {"det": det(CLASSES, DET_OBJECTS), "pose": det(1, POSE_OBJECTS)}
    t["hps"] = torch.randn(b, POSE_OBJECTS, 2 * JOINTS, generator=gen) * 4
    t["hps_mask"] = t["pose"][2].unsqueeze(2).expand(b, POSE_OBJECTS, 2 * JOINTS).clone()
    t["hm_hp"] = torch.rand(b, JOINTS, h, w, generator=gen) ** 16
    t["hp_ind"] = torch.randint(0, h * w, (b, POSE_OBJECTS * JOINTS), generator=gen)
    for i in range(b):
        for k in range(8 * JOINTS):
            t["hm_hp"][i, k % JOINTS].view(-1)[t["hp_ind"][i, k]] = 1.0
    hp_mask = torch.zeros(b, POSE_OBJECTS * JOINTS)
    hp_mask[:, : 8 * JOINTS] = 1
    t["hp_mask"] = hp_mask
    t["hp_offset"] = torch.rand(b, POSE_OBJECTS * JOINTS, 2, generator=gen)
    seg = torch.randint(0, CLASSES + 1, (b, size, size), generator=gen)
    seg[torch.rand(b, size, size, generator=gen) < 0.01] = 255
    t["seg"] = seg
    return t


def detection_loss(out, t):
    hm, ind, mask, wh, reg = t
    return (
        focal_loss(out["hm"], hm)
        + 0.1 * reg_l1(out["wh"], ind, mask, wh)
        + reg_l1(out["reg"], ind, mask, reg)
    )


def losses(outputs, t):
    det, pose, seg = outputs
    d = detection_loss(det, t["det"])
    p = detection_loss(pose, t["pose"])
    ind = t["pose"][1]
    hps = gather(pose["hps"], ind)
    p = p + (hps - t["hps"]).abs().mul(t["hps_mask"]).sum() / (t["hps_mask"].sum() + 1e-4)
    p = p + focal_loss(pose["hm_hp"], t["hm_hp"])
    p = p + reg_l1(pose["hp_offset"], t["hp_ind"], t["hp_mask"], t["hp_offset"])
    s = F.cross_entropy(seg, t["seg"], ignore_index=255)
    return d + p + s, {"detection": d, "pose": p, "segmentation": s}


def median_ms(times):
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=["forward", "train", "params"], default="forward")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--size", type=int)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def now():
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Mcn().to(device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {
        "impl": "pytorch",
        "version": torch.__version__,
        "case": args.case,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "parameters": params,
    }
    times = []
    if args.case == "forward":
        b, size = args.batch or 1, args.size or 512
        result["shape"] = [b, 3, size, size]
        model.eval()
        x = torch.randn(b, 3, size, size, generator=gen).to(device)
        with torch.no_grad():
            for it in range(args.warmup + args.iterations):
                t0 = now()
                det, pose, seg = model(x)
                dt = now() - t0
                if it >= args.warmup:
                    times.append(dt)
    elif args.case == "train":
        b, size = args.batch or 8, args.size or 256
        result["shape"] = [b, 3, size, size]
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith(".bias")]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.endswith(".bias"))]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
            lr=5e-4,
        )
        x = torch.randn(b, 3, size, size, generator=gen).to(device)
        targets = {
            k: tuple(t.to(device) for t in v) if isinstance(v, tuple) else v.to(device)
            for k, v in random_targets(b, size, gen).items()
        }
        names = ["forward", "loss", "backward", "optimizer"]
        phases = {n: [] for n in names}
        for it in range(args.warmup + args.iterations):
            t0 = now()
            opt.zero_grad(set_to_none=True)
            out = model(x)
            t1 = now()
            total, per_task = losses(out, targets)
            values = {k: float(v.detach()) for k, v in per_task.items()}
            t2 = now()
            total.backward()
            t3 = now()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            t4 = now()
            if it >= args.warmup:
                times.append(t4 - t0)
                for n, (a, z) in zip(names, [(t0, t1), (t1, t2), (t2, t3), (t3, t4)]):
                    phases[n].append(z - a)
        result["loss"] = values
        result["phases_ms"] = {n: median_ms(p) for n, p in phases.items()}
    if times:
        result["median_ms"] = median_ms(times)
        result["times_ms"] = [t * 1e3 for t in times]
        result["images_per_s"] = result["shape"][0] / (result["median_ms"] / 1e3)
    # Linux reports ru_maxrss in KiB.
    result["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["device_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
