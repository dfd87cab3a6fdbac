"""The UNet's forward replayed from CUDA graphs, one per input shape.

At one image per call the UNet is launch-bound on a fast GPU: about a thousand small kernels per step are
queued one by one from Python while the GPU waits. A CUDA graph records those launches once and replays them
with one call. `GraphedForward` takes the place of the UNet's `forward`:

- a call whose shapes it has a graph for copies its inputs into that graph's static buffers, replays it and
  returns a copy of the static output (the scheduler's own step stays eager, and cancel and progress still
  come at every step, between UNet calls);
- a call with new shapes (another size, batch or guidance) captures a graph first: a few eager warm-up calls
  on a side stream, then one recorded call; every graph shares one memory pool;
- a call it cannot graph (arguments the pipeline does not pass for SD1.5 inpainting, more shapes than
  `max_graphs`, a shape whose capture failed) runs eager, unchanged.

Graphs replay the same kernels on the same inputs, so a seed gives the same image run after run. The capture
itself is a parameter, so the bookkeeping runs (and is tested) on CPU with a stand-in.
"""

import logging
import time
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

MAX_GRAPHS = 24  # sizes x batch sizes x guidance on/off; each holds its static buffers in the shared pool
WARMUP_CALLS = 2  # eager calls on a side stream before capturing (cuDNN/cuBLAS pick their kernels here)


class StaticGraph:
    """What replaying needs, whatever records the launches: static input buffers that each call fills, and a
    static output that each replay rewrites."""

    def __init__(self, run: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], pool: Any):
        self.inputs = tuple(x.clone() for x in inputs)
        self.output = self.record(run, pool)

    def record(self, run: Callable[..., torch.Tensor], pool: Any) -> torch.Tensor:
        raise NotImplementedError

    def launch(self) -> None:
        raise NotImplementedError

    def replay(self, *inputs: torch.Tensor) -> torch.Tensor:
        for static, value in zip(self.inputs, inputs):
            static.copy_(value)
        self.launch()
        return self.output.clone()  # the next replay overwrites the static output


class CudaGraph(StaticGraph):
    """A forward captured with torch.cuda.graph after WARMUP_CALLS eager calls on a side stream."""

    def record(self, run: Callable[..., torch.Tensor], pool: Any) -> torch.Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                run(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            return run(*self.inputs)

    def launch(self) -> None:
        self.graph.replay()


def cuda_graph_pool() -> Any:
    return torch.cuda.graph_pool_handle()


class GraphedForward:
    """Installed as `unet.forward`; the module's own forward is kept in `eager`."""

    def __init__(self, eager: Callable, capture: Callable = CudaGraph, pool: Any = None,
                 max_graphs: int = MAX_GRAPHS):
        self.eager, self.capture, self.pool, self.max_graphs = eager, capture, pool, max_graphs
        self.graphs: dict[tuple, Any] = {}
        self.refused: set[tuple] = set()  # shapes whose capture failed: eager from then on
        self.capture_seconds: dict[tuple, float] = {}

    def _run(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.eager(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]

    def __call__(self, sample, timestep, encoder_hidden_states, class_labels=None, timestep_cond=None,
                 attention_mask=None, cross_attention_kwargs=None, added_cond_kwargs=None, return_dict=True,
                 **more):
        unusual = (class_labels, timestep_cond, attention_mask, cross_attention_kwargs, added_cond_kwargs,
                   *more.values())
        if any(arg is not None for arg in unusual) or not torch.is_tensor(timestep):
            return self.eager(sample, timestep, encoder_hidden_states, class_labels=class_labels,
                              timestep_cond=timestep_cond, attention_mask=attention_mask,
                              cross_attention_kwargs=cross_attention_kwargs, added_cond_kwargs=added_cond_kwargs,
                              return_dict=return_dict, **more)
        inputs = (sample, timestep, encoder_hidden_states)
        graph = self._graph_for(inputs)
        output = self._run(*inputs) if graph is None else graph.replay(*inputs)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=output)
        return (output,)

    def _graph_for(self, inputs: tuple[torch.Tensor, ...]) -> Any | None:
        key = tuple((tuple(x.shape), x.dtype, x.device) for x in inputs)
        graph = self.graphs.get(key)
        if graph is not None or key in self.refused:
            return graph
        if len(self.graphs) >= self.max_graphs:
            return None
        started = time.perf_counter()
        try:
            graph = self.capture(self._run, inputs, self.pool)
        except Exception:  # a shape that cannot be graphed runs eager; the request goes on
            log.exception("capturing a CUDA graph for the UNet at %s failed; that shape runs eager", key)
            self.refused.add(key)
            return None
        self.graphs[key] = graph
        self.capture_seconds[key] = time.perf_counter() - started
        log.info("captured a CUDA graph for the UNet at %s in %.2fs (%d graphs)", [list(s) for s, _, _ in key],
                 self.capture_seconds[key], len(self.graphs))
        return graph


def use_cuda_graphs(unet: torch.nn.Module, capture: Callable = CudaGraph, pool: Any = None) -> GraphedForward:
    """Make `unet` replay CUDA graphs (see the module docstring). Undo with `eager_forward(unet)`."""
    if isinstance(unet.forward, GraphedForward):
        return unet.forward
    graphed = GraphedForward(unet.forward, capture, cuda_graph_pool() if pool is None and capture is CudaGraph
                             else pool)
    unet.forward = graphed
    return graphed


def eager_forward(unet: torch.nn.Module) -> None:
    if isinstance(unet.forward, GraphedForward):
        del unet.forward  # the instance attribute: the class's forward again
