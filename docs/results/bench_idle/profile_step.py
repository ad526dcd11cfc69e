import torch, time
from torch.profiler import profile, ProfilerActivity
from diffnorm.models.temporal_unet import TemporalUnet
from diffnorm.models.norms import norm_factory
torch.set_num_threads(2)
m = TemporalUnet(horizon=128, transition_dim=6, norm_layer=norm_factory("group"))
x = torch.randn(32,128,6); t = torch.randint(0,64,(32,))
opt = torch.optim.Adam(m.parameters(), fused=True)
def step():
    opt.zero_grad(); loss = (m(x,t)-x).pow(2).mean(); loss.backward(); opt.step()
for _ in range(3): step()
t0=time.perf_counter()
for _ in range(5): step()
print("step", (time.perf_counter()-t0)/5)
with profile(activities=[ProfilerActivity.CPU]) as p:
    for _ in range(3): step()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
