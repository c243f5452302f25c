"""Two-point averaging and its equivalent learning-rate schedule in your own PyTorch loop (Sandler et al.).

    python examples/two_point_average.py        # CPU only

The paper: "averaging just two points many steps apart significantly improves accuracy", and every
average has an equivalent learning-rate schedule -- for (theta_{T-D} + theta_T) / 2 it is the same run
with half the learning rate over the last D steps (Lemma 2: exact when each batch's gradient does not
depend on the parameters, close in practice). Below: a small regression MLP trained with SGD + momentum
at a constant lr, then the same run with the two extra pieces (marked ``# +``).
"""
import torch
from torch import nn

from realnet.averaging import EquivalentScheduleLR, KernelAveragedModel

torch.manual_seed(0)
X = torch.randn(4096, 20)
Y = torch.tanh(X @ torch.randn(20, 1)) + 0.5 * torch.randn(4096, 1)  # noisy targets: SGD keeps bouncing
X_test, Y_test = X[3072:], Y[3072:]
T, D = 2000, 500  # train T steps; average theta_{T-D} and theta_T


def make_model():
    torch.manual_seed(1)  # the same initial weights for every run
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)


def train(model, opt, loss_fn, after_step):
    g = torch.Generator().manual_seed(2)  # the same batches for every run
    for _ in range(T):
        i = torch.randint(0, 3072, (16,), generator=g)
        opt.zero_grad()
        loss_fn(model, X[i], Y[i]).backward()
        opt.step()
        after_step()


def mse(model, x, y):
    return ((model(x) - y) ** 2).mean()


def linear_loss(model, x, y):  # linear in the parameters: each batch's gradient is constant (Lemma 2)
    return -(model[0].weight.sum(0) * (x * y).mean(0)).sum() - model[2].weight.sum()


def test_loss(model):
    with torch.no_grad():
        return mse(model, X_test, Y_test).item()


for name, loss_fn in (("MLP, squared loss", mse), ("Lemma 2 case, loss linear in the weights", linear_loss)):
    # 1. your loop, plus a two-point average
    model, opt = make_model()
    avg = KernelAveragedModel(model, f"twopoint:{D}", at_step=T)           # +
    train(model, opt, loss_fn, after_step=lambda: avg.update_parameters(model))  # +
    # 2. the same loop with the equivalent schedule (lr x 1 for steps 1..T-D, lr x 1/2 after)
    side, side_opt = make_model()
    sched = EquivalentScheduleLR(side_opt, f"twopoint:{D}", at_step=T)     # +
    train(side, side_opt, loss_fn, after_step=sched.step)                  # +

    if loss_fn is mse:  # close, not equal: the gradients change along the way
        print(f"{name}: test loss  last iterate {test_loss(model):.4f}  two-point average "
              f"{test_loss(avg.module):.4f}  equivalent schedule {test_loss(side):.4f}")
    else:  # equal up to float32 rounding
        flat = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])  # noqa: E731
        gap = (flat(avg.module) - flat(side)).norm() / (flat(avg.module) - flat(model)).norm()
        print(f"{name}: |average - schedule's end point| / |average - last iterate| = {gap:.1e}")
