"""Per-GPU memory of a LoRA run under ZeRO-2, ZeRO-3 and ZeRO-3 offload: the estimates `--dry_run` prints.

Memory per GPU (GiB = 2**30 bytes; a "80 GB" GPU has 80 GiB)
    b = bytes per parameter at the compute dtype (2 for bf16/fp16, 4 for fp32), P = all parameters,
    T = trainable ones, L = the largest module's own parameters (what ZeRO-3 gathers at once), W =
    world size.

    weights        P*b on every GPU under ZeRO-2; P*b/W under ZeRO-3; 0 under ZeRO-3 with CPU offload
                   (parameters live in CPU memory and are fetched layer by layer).
    grads+optim    DeepSpeed's own estimators (`estimate_zero2_model_states_mem_needs`,
                   `estimate_zero3_model_states_mem_needs`) assume every parameter is trained, so
                   they are applied to T only (LoRA: the frozen weights are added above, not here).
                   Their GPU figure is 2T + 18T/W for ZeRO-2 (16-bit params + 16-bit grads, fp32
                   grads, fp32 master, Adam m and v: the 18 bytes sharded) and 4L + 18T/W for
                   ZeRO-3; the trainable params' 16-bit copy (2T, or 2T/W under ZeRO-3) is already
                   in `weights` and is taken out here, and ZeRO-3's 4L is shown as `gather`. With
                   offload the states are in CPU memory (0 on the GPU); the CPU need per node is
                   DeepSpeed's figure for T plus the offloaded weights P*b/nodes.
                   (DeepSpeed's estimators assume mixed precision; in fp32 they over-count T's
                   states by ~4 bytes per trainable parameter, negligible for LoRA.)
    gather         ZeRO-3 only: DeepSpeed's `largest_layer_memory` = 4L bytes (the gathered layer).
    activations    Per micro-batch of B samples of s tokens through the language model (h hidden,
                   I MLP width, a heads, g = kv heads x head dim, N layers), counting every tensor
                   a decoder layer's backward may need (the method of Korthikanti et al., "Reducing
                   Activation Recomputation in Large Transformer Models", 2022, sec. 4.1, whose GPT
                   layer comes to s*B*h*(34 + 5*a*s/h) bytes; here re-counted for a pre-norm
                   Llama/Qwen layer without dropout, with RMSNorm's fp32 upcast and a gated MLP):

                       per layer = s*B*( 8h            two RMSNorms keep their fp32 input
                                       + 2h + 2(h+2g)  q/k/v input; q, k, v
                                       + 4h            attention output, and o_proj's contiguous input
                                       + 2h + 8I       MLP input; gate, up, act(gate), act*up
                                       + 3*D )         LoRA dropout: each LoRA module with dropout > 0
                                                       keeps a dropped 16-bit copy of its input and a
                                                       1-byte mask (D = sum of their input widths)
                                 + 2*a*s^2*B  with eager attention (the probabilities), or
                                 + 4*a*s*B    with sdpa / flash-attention (fp32 log-sum-exp only)

                   Without gradient checkpointing all N layers keep theirs: N x per layer. With it
                   (each decoder layer is a checkpoint) only the layer inputs stay, 2*s*B*h*N, plus
                   one layer's full activations while it is recomputed in the backward pass. For
                   Llama-7B this is ~44 s*B*h per layer before LoRA dropout, close to the paper's 34
                   for a GPT layer with a 4h MLP. It is an upper estimate: autograd may skip saving
                   the input of a frozen linear. A frozen vision tower keeps no activations (nothing
                   in it needs a gradient); a trainable one adds its layers at the paper's 34*hv
                   bytes per patch per layer, patches = visual tokens x the family's merge factor.
    logits         s*B*V*14 bytes at the peak of the loss's backward: the 16-bit logits kept in the
                   model output (2) and what the trainer's loss (`token_loss_sum`) adds, measured:
                   the shifted 16-bit copy and its fp32 cast, the log-softmax it saves, the fp32
                   gradients of the backward (12 in all; tests/test_plan.py measures it).

    Activation sequence length s: the longest sampled sample, capped at max_length (or the context);
    without shards, the cap itself. `max micro-batch`: the largest B for which weights + grads+optim
    + gather + activations + logits stays within 90% of gpu_memory_gb (10% for the CUDA context,
    NCCL buffers and fragmentation), with gradient checkpointing as configured (every term but the
    fixed ones grows linearly in B).
"""

from __future__ import annotations

GIB = 1 << 30
MARGIN = 0.10               # share of GPU memory kept free for the CUDA context, NCCL and fragmentation
LOGIT_BYTES = 2 + 12        # 16-bit logits, then the loss's peak over them (module docstring)
STAGES = ("zero2", "zero3", "zero3_offload")


# --------------------------------------------------------------------------------------------
def activation_bytes(lm: dict, seq: int, batch: int, *, checkpointing: bool, attention: str,
                     lora_input_width: float = 0.0) -> int:
    """Activation bytes of one micro-batch in the language model (formula in the module docstring)."""
    h, i, a, n = lm["hidden_size"], lm["intermediate_size"], lm["heads"], lm["layers"]
    g = lm["kv_heads"] * lm["head_dim"]
    per_token = 8 * h + 2 * h + 2 * (h + 2 * g) + 4 * h + 2 * h + 8 * i + 3 * lora_input_width
    scores = 2 * a * seq * seq * batch if attention == "eager" else 4 * a * seq * batch
    layer = seq * batch * per_token + scores
    if checkpointing:
        return int(2 * seq * batch * h * n + layer)
    return int(n * layer)


def logits_bytes(lm: dict, seq: int, batch: int) -> int:
    return seq * batch * lm["vocab_size"] * LOGIT_BYTES


def vision_activation_bytes(vision: dict, visual_tokens_per_sample: float, batch: int) -> int:
    """A trainable vision tower's activations: 34 bytes x width per patch per layer (Korthikanti et al.)."""
    patches = visual_tokens_per_sample * vision["patches_per_visual_token"]
    return int(34 * vision["hidden_size"] * vision["layers"] * patches * batch)


def _ds_estimators():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


def stage_memory(stage: str, *, params: int, trainable: int, largest_layer: int, bytes_per_param: int,
                 gpus_per_node: int, nodes: int) -> dict:
    """Bytes per GPU of weights, trainable states and ZeRO-3's gather buffer, and CPU bytes per node."""
    est2, est3 = _ds_estimators()
    world = gpus_per_node * nodes
    if stage == "zero2":
        cpu, gpu = est2(trainable, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=False)
        weights, gather = params * bytes_per_param, 0
        states = gpu - 2 * trainable
        cpu_need = None
    elif stage == "zero3":
        cpu, gpu, gather = est3(trainable, largest_layer, num_gpus_per_node=gpus_per_node, num_nodes=nodes,
                                cpu_offload=False)
        weights = params * bytes_per_param / world
        states = gpu - gather - 2 * trainable / world
        cpu_need = None
    elif stage == "zero3_offload":
        cpu, gpu, gather = est3(trainable, largest_layer, num_gpus_per_node=gpus_per_node, num_nodes=nodes,
                                cpu_offload=True, cpu_offload_params=True)
        weights, states = 0, gpu - gather
        cpu_need = cpu + params * bytes_per_param / nodes
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return {"weights": int(weights), "grads_optim": int(max(states, 0)), "gather": int(gather),
            "cpu_per_node": None if cpu_need is None else int(cpu_need)}


def estimate_memory(model: dict, *, precision: str, gpus_per_node: int, nodes: int, seq: int, micro_batch: int,
                    checkpointing: bool, attention: str, gpu_memory_gb: float,
                    visual_tokens_per_sample: float = 0.0, vision_trainable: bool = False) -> dict:
    """Per-GPU memory of every ZeRO stage for one micro-batch, and the largest micro-batch that fits."""
    lm = model["language_model"]
    bpp = 4 if precision == "no" else 2
    budget = gpu_memory_gb * GIB * (1 - MARGIN)

    def variable(b: int) -> tuple[int, int]:
        act = activation_bytes(lm, seq, b, checkpointing=checkpointing, attention=attention,
                               lora_input_width=model["lora_input_width_per_layer"])
        if vision_trainable:
            act += vision_activation_bytes(model["vision"], visual_tokens_per_sample, b)
        return act, logits_bytes(lm, seq, b)

    act, logits = variable(micro_batch)
    per_sample = sum(variable(1))
    stages = {}
    for stage in STAGES:
        m = stage_memory(stage, params=model["parameters"], trainable=model["trainable"],
                         largest_layer=model["largest_layer_parameters"], bytes_per_param=bpp,
                         gpus_per_node=gpus_per_node, nodes=nodes)
        fixed = m["weights"] + m["grads_optim"] + m["gather"]
        total = fixed + act + logits
        best = int((budget - fixed) // per_sample) if budget > fixed and per_sample else 0
        stages[stage] = {
            "weights_gb": m["weights"] / GIB, "grads_optim_gb": m["grads_optim"] / GIB, "gather_gb": m["gather"] / GIB,
            "activations_gb": act / GIB, "logits_gb": logits / GIB, "total_gb": total / GIB,
            "fits": total <= budget, "max_micro_batch": max(best, 0),
            "cpu_per_node_gb": None if m["cpu_per_node"] is None else m["cpu_per_node"] / GIB,
        }
    return {"seq": seq, "micro_batch": micro_batch, "gradient_checkpointing": checkpointing, "attention": attention,
            "bytes_per_param": bpp, "gpu_memory_gb": gpu_memory_gb, "usable_gb": budget / GIB, "stages": stages}


def configured_stage(ds: dict | None) -> str:
    if ds is None:
        return "none"
    zero = ds.get("zero_optimization", {})
    stage = int(zero.get("stage", 0) or 0)
    if stage >= 3:
        offload = (zero.get("offload_param") or {}).get("device", "none") not in ("none", None)
        return "zero3_offload" if offload else "zero3"
    return "zero2" if stage else "none"


