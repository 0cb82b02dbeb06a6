"""The training loop (one file, top to bottom): fit the editing model, or — task inversion — only a
new task vector with everything else frozen.

  1. build the model (tiny-random / text-to-image checkpoint / our checkpoint) and the data stream
  2. AdamW, linear warm-up then cosine decay; EMA of the trained weights
  3. each step: encode both images (frozen VAE) and the instruction (frozen text encoder), noise the
     output latent at a random timestep, drop instruction / input image at random for classifier-
     free guidance, predict noise (or v), MSE
  4. log to TensorBoard with a progress bar; save resumable checkpoints as diffusers pipeline folders
     (EmuEditPipeline, model_index.json, model card)

One loop serves every scale: ``accelerate launch -m pipeline.cli train ...`` on several GPUs,
``train_ray`` (Ray Train ``TorchTrainer``) on several nodes — Ray Train sets up the process group
and the environment variables accelerate reads, so the loop is the same. Every random draw of a
step comes from a generator seeded by (seed, step, rank, micro-batch) and the data order is a
function of the seed, so a resumed run continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import TrainConfig
from trainer.data import PairStream, batches
from trainer.model import EditModel, build_edit_model, load_edit_model
from trainer.model_card import describe_data

log = logging.getLogger("pairforge.train")
FIXED_BATCHES = 2          # batches of the fixed loss probe (before/after numbers in the summary)


def step_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    """Step -1 is the fixed loss probe, -2 the reference outputs of the tests."""
    s = int(np.random.SeedSequence([seed, step + 2, rank, micro]).generate_state(1)[0])
    return torch.Generator().manual_seed(s)


class InvertedTask(nn.Module):
    """Task inversion: the frozen model conditioned on one new, trainable task vector."""

    def __init__(self, net, init: torch.Tensor):
        super().__init__()
        self.net = net
        self.vector = nn.Parameter(init.detach().clone())

    def forward(self, noisy, image_latents, timesteps, text_states, task_ids=None, task_vectors=None):
        vec = self.vector.unsqueeze(0).expand(noisy.shape[0], -1)
        return self.net(noisy, image_latents, timesteps, text_states, task_vectors=vec)


def diffusion_loss(em: EditModel, net: nn.Module, batch: dict, task_ids: torch.Tensor, gen: torch.Generator,
                   cond_dropout: float, null_text: torch.Tensor) -> torch.Tensor:
    device = em.device
    target_latents = em.encode_images(batch["output"])
    image_latents = em.encode_images(batch["input"])
    text = em.encode_text(batch["instruction"])
    b = target_latents.shape[0]
    noise = torch.randn(target_latents.shape, generator=gen).to(device)
    t = torch.randint(0, em.scheduler.config.num_train_timesteps, (b,), generator=gen).to(device)
    noisy = em.scheduler.add_noise(target_latents, noise, t)
    target = noise if em.prediction_type == "epsilon" else em.scheduler.get_velocity(target_latents, noise, t)
    # classifier-free guidance dropout (InstructPix2Pix): [0,q) no text, [q,2q) neither, [2q,3q) no image
    p = torch.rand(b, generator=gen).to(device)
    drop_text = p < 2 * cond_dropout
    drop_image = (p >= cond_dropout) & (p < 3 * cond_dropout)
    text = torch.where(drop_text[:, None, None], null_text.expand_as(text), text)
    image_latents = image_latents * (~drop_image).to(image_latents.dtype)[:, None, None, None]
    pred = net(noisy, image_latents, t, text, task_ids=task_ids.to(device))
    return F.mse_loss(pred.float(), target.float())


@torch.no_grad()
def probe_loss(em: EditModel, net: nn.Module, probe: list[tuple[dict, torch.Tensor]], seed: int) -> float:
    """Loss on fixed batches with fixed noise and timesteps and no dropout: comparable across steps."""
    null_text = em.encode_text([""])
    losses = [diffusion_loss(em, net, b, ids, step_generator(seed, -1, 0, i), 0.0, null_text).item()
              for i, (b, ids) in enumerate(probe)]
    return float(np.mean(losses))


def _task_ids(em: EditModel, names: list[str]) -> torch.Tensor:
    return torch.tensor([em.net.tasks.id_of(n) for n in names], dtype=torch.long)


def _latest_checkpoint(out: Path) -> Path | None:
    cks = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return cks[-1] if cks else None


def train(cfg: TrainConfig, *, resume: bool = False, invert_task: str | None = None, init_task: str | None = None,
          progress: bool = True) -> dict:
    """Train (or invert a task) as ``cfg`` says; returns a summary. Call on every process."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    out = Path(cfg.output_dir).resolve()
    acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available(), log_with="tensorboard",
                      project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    rank, world = acc.process_index, acc.num_processes

    # 1. model and data
    em = build_edit_model(cfg)
    em.vae.to(acc.device)
    em.text_encoder.to(acc.device)
    if invert_task:
        em.net.requires_grad_(False)
        table = em.net.tasks.table.weight.detach()
        init = table[em.net.tasks.id_of(init_task)] if init_task else table.mean(0)
        net: nn.Module = InvertedTask(em.net, init)
        params = [net.vector]
    else:
        net = em.net
        params = [p for p in net.parameters() if p.requires_grad]
    # inversion: the examples of the new task are the rows given (data.tasks / data.max_examples)
    stream = PairStream(cfg.data.shards, "train", cfg.data.tasks, cfg.data.holdout_fraction, cfg.data.max_examples,
                        cfg.data.shuffle_buffer, cfg.seed, instruction_column=cfg.data.instruction_column)
    known = set(em.net.tasks.names)
    unknown = set(cfg.data.tasks or []) - known
    if unknown and not invert_task:
        raise ValueError(f"data.tasks: {sorted(unknown)} have no embedding in this model (known: "
                         f"{', '.join(em.net.tasks.names)}); learn one with --invert-task")
    orphans: dict[str, int] = {}
    if not invert_task:
        stream.tasks = [t for t in (cfg.data.tasks or sorted(known)) if t in known]
        if cfg.data.tasks is None:      # "all tasks" cannot include one the model has no embedding for: say so
            orphans = {t: n for t, n in sorted(stream.task_counts().items()) if t not in known}
            if orphans:
                log.warning("data: %d rows of tasks without an embedding in this model are left out: %s "
                            "(learn one with --invert-task)", sum(orphans.values()), orphans)

    # 2. optimizer, schedule, EMA
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)
    lr_sched = get_cosine_schedule_with_warmup(opt, cfg.optim.warmup_steps, cfg.optim.max_steps)
    # the lr schedule is not prepared: accelerate would step it once per process; we step it once per step
    net, opt = acc.prepare(net, opt)
    acc.register_for_checkpointing(lr_sched)
    ema = None
    if cfg.ema_decay is not None and not invert_task:
        ema = EMAModel(list(acc.unwrap_model(net).parameters()), decay=cfg.ema_decay)
        acc.register_for_checkpointing(ema)
    step, position = 0, 0
    if resume and not invert_task:
        ck = _latest_checkpoint(out)
        if ck is not None:
            load_train_state(acc, ck / "train_state")
            if ema is not None:     # accelerate restores registered objects on the CPU (found on a GPU)
                ema.to(acc.device)
            state = json.loads((ck / "train_state" / "progress.json").read_text())
            step, position = state["step"], state["positions"][str(rank)]
            log.info("resumed from %s at step %d", ck, step)
        else:
            log.info("--resume: no checkpoint-* in %s, starting at step 0", out)
    null_text = em.encode_text([""])
    samples = stream.samples(cfg.model.resolution, rank, world, start=position)
    data = batches(samples, cfg.optim.batch_size)

    probe_stream = PairStream(cfg.data.shards, "train", stream.tasks, cfg.data.holdout_fraction,
                              cfg.data.max_examples, cfg.data.shuffle_buffer, cfg.seed,
                              instruction_column=cfg.data.instruction_column)
    probe_batches = batches(probe_stream.samples(cfg.model.resolution), cfg.optim.batch_size)
    probe = [(b, _ids(em, b, invert_task)) for b in (next(probe_batches) for _ in range(FIXED_BATCHES))]
    summary = {"start_step": step, "probe_loss_before": probe_loss(em, net, probe, cfg.seed),
               "rows_without_task_embedding": orphans}

    # what the model card reports about the data: read once, by the process that writes checkpoints
    meta = {"world": world, "data": describe_data(stream, cfg.data.tasks)} if acc.is_main_process else {}
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(cfg.resolved_yaml())
        acc.init_trackers("invert" if invert_task else "train")

    # 3. the loop
    bar = tqdm(total=cfg.optim.max_steps, initial=step, disable=not (progress and acc.is_main_process),
               desc=f"invert {invert_task}" if invert_task else "train")
    net.train()
    losses = []
    while step < cfg.optim.max_steps:
        total = 0.0
        for micro in range(cfg.optim.grad_accum):
            batch = next(data)
            sync = nullcontext() if micro == cfg.optim.grad_accum - 1 else acc.no_sync(net)
            with sync, acc.autocast():
                loss = diffusion_loss(em, net, batch, _ids(em, batch, invert_task),
                                      step_generator(cfg.seed, step, rank, micro), cfg.cond_dropout, null_text)
                acc.backward(loss / cfg.optim.grad_accum)
            total += loss.item() / cfg.optim.grad_accum
        acc.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(acc.unwrap_model(net).parameters())
        step += 1
        mean_loss = acc.reduce(torch.tensor(total, device=acc.device), reduction="mean").item()
        losses.append(mean_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_sched.get_last_lr()[0]:.2e}")
        if step % cfg.log_every == 0:
            acc.log({"loss": mean_loss, "lr": lr_sched.get_last_lr()[0]}, step=step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.optim.max_steps and not invert_task:
            save_checkpoint(acc, em, net, ema, cfg, out / f"checkpoint-{step}", step, stream, meta)
    bar.close()

    # 4. final model
    # every worker must hold the same weights after all-reduced steps: compare a checksum across ranks
    checksum = torch.tensor([sum(p.double().sum().item() for p in params)], device=acc.device, dtype=torch.float64)
    sums = acc.gather(checksum).tolist()
    summary.update(steps=step, loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
                   probe_loss_after=probe_loss(em, net, probe, cfg.seed), skipped=dict(stream.skipped), world=world,
                   ranks_in_sync=len(set(sums)) == 1)
    if invert_task:
        vector = acc.unwrap_model(net).vector.detach()
        em.net.tasks.add_task(invert_task, vector)
        if acc.is_main_process:
            em.save(out / "final", step=step, inverted_task=invert_task, config=cfg.model_dump(mode="json"), **meta)
    else:
        save_checkpoint(acc, em, net, ema, cfg, out / f"checkpoint-{step}", step, stream, meta, final=True)
    summary["checkpoint"] = str(out / "final")
    acc.end_training()
    if acc.is_main_process:
        (out / "final" / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def load_train_state(acc, path: Path) -> None:
    """``acc.load_state``, except that the registered objects (lr schedule, EMA) are read with
    ``torch.load(weights_only=True)``: accelerate reads them with weights_only=False, which runs
    whatever a ``custom_checkpoint_N.pkl`` pickles (the model and optimizer it already reads safely).
    Their files hold state dicts of tensors and numbers, so nothing a real checkpoint needs is lost."""
    from unittest import mock

    import accelerate.accelerator as accelerator_module

    def load_custom_state(obj, input_dir, index: int = 0) -> None:
        f = Path(input_dir) / f"custom_checkpoint_{index}.pkl"
        obj.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))

    with mock.patch.object(accelerator_module, "load_custom_state", load_custom_state):
        acc.load_state(str(path))


def _ids(em: EditModel, batch: dict, invert_task: str | None) -> torch.Tensor:
    if invert_task:                        # InvertedTask ignores the ids; the row's own task is not the new one
        return torch.zeros(len(batch["task"]), dtype=torch.long)
    return _task_ids(em, batch["task"])


def save_checkpoint(acc, em: EditModel, net, ema, cfg: TrainConfig, path: Path, step: int, stream: PairStream,
                    meta: dict, final: bool = False) -> None:
    """``path``: the model as a diffusers pipeline folder with its model card (EMA weights when EMA
    is on; ``meta``: data and world size for the card) + ``train_state/``
    (raw weights, optimizer, schedule, EMA) to resume from. The final one is also copied to ``final``."""
    positions = acc.gather(torch.tensor([stream.position], device=acc.device)).tolist()
    if acc.is_main_process:
        acc.save_state(str(path / "train_state"))
        (path / "train_state" / "progress.json").write_text(json.dumps(
            {"step": step, "positions": {str(r): p for r, p in enumerate(positions)}}))
        unwrapped = acc.unwrap_model(net)
        if ema is not None:
            ema.store(unwrapped.parameters())
            ema.copy_to(unwrapped.parameters())
        em.save(path, step=step, ema=ema is not None, config=cfg.model_dump(mode="json"), **meta)
        if ema is not None:
            ema.restore(unwrapped.parameters())
        old = sorted(path.parent.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for p in old[:-cfg.keep_checkpoints]:
            shutil.rmtree(p, ignore_errors=True)
        if final:
            dst = path.parent / "final"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(path, dst, ignore=shutil.ignore_patterns("train_state"))
    acc.wait_for_everyone()


def train_ray(cfg: TrainConfig, num_workers: int, *, use_gpu: bool = False, resume: bool = False,
              invert_task: str | None = None, init_task: str | None = None) -> dict:
    """The same loop on a Ray cluster through Ray Train (``TorchTrainer``): one process per worker,
    gradients all-reduced (gloo on CPUs, NCCL on GPUs). ``output_dir`` must be storage every worker
    sees (one node, or a shared file system); rank 0 writes the checkpoints."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = cfg.model_copy(update={"output_dir": str(Path(cfg.output_dir).resolve()),
                                 "data": cfg.data.model_copy(update={"shards": [str(Path(s).resolve())
                                                                                for s in cfg.data.shards]})})

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        from pipeline.runner import init_local_ray      # no cluster named: a local Ray on loopback only
        init_local_ray(include_dashboard=False, logging_level=logging.WARNING)

    def loop(config: dict) -> None:
        summary = train(TrainConfig.model_validate(config["cfg"]), progress=False, **config["kw"])
        ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})

    trainer = TorchTrainer(loop, train_loop_config={"cfg": cfg.model_dump(mode="json"),
                                                    "kw": dict(resume=resume, invert_task=invert_task,
                                                               init_task=init_task)},
                           scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
                           run_config=RunConfig(name="pairforge-train", storage_path=str(Path(cfg.output_dir) / "ray")))
    trainer.fit()
    return json.loads((Path(cfg.output_dir) / "final" / "summary.json").read_text())


def reference_outputs(em: EditModel, batch: dict, seed: int = 0) -> torch.Tensor:
    """The model's prediction on a batch with fixed noise (tests: reloaded checkpoints agree)."""
    g = step_generator(seed, -2, 0, 0)
    with torch.no_grad():
        lat = em.encode_images(batch["output"])
        noise = torch.randn(lat.shape, generator=g).to(lat.device)      # drawn on the CPU: same on any device
        t = torch.full((lat.shape[0],), em.scheduler.config.num_train_timesteps // 2, dtype=torch.long,
                       device=lat.device)
        return em.net(em.scheduler.add_noise(lat, noise, t), em.encode_images(batch["input"]), t,
                      em.encode_text(batch["instruction"]), task_ids=_task_ids(em, batch["task"]).to(lat.device))


__all__ = ["train", "train_ray", "diffusion_loss", "probe_loss", "load_edit_model", "reference_outputs",
           "InvertedTask"]
