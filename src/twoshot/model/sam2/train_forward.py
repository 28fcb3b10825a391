"""SAM 2's training forward over a clip: the semi-supervised case of the reference's
``SAM2Train`` (``training/model/sam2.py`` of facebookresearch/sam2).

What is reproduced (the reference with a mask prompt on the first frame, i.e. its
``prob_to_use_pt_input_for_train`` 0 and ``num_init_cond_frames_for_train`` 1, so that it
draws no random number):

- every frame of every clip goes through the image encoder once (one batch);
- each object of each clip (a selected slot) is an independent track, as the reference
  flattens a batch's objects: frame 0 is its conditioning frame, its ground-truth mask the
  output (logits +-10; the object pointer from SAM's heads prompted with the mask; a dummy
  predicted IoU of 1), its memory encoded from the *sigmoid* of those logits (the reference
  binarises only in evaluation);
- every later frame reads the conditioning frame (temporal slot 0) and the 6 frames before it
  (stride 1, as in training), and the object pointers of the conditioning frame and of up to
  ``min(T, 16) - 1`` earlier frames (distances scaled by ``min(T, 16) - 1``); SAM's decoder,
  without a prompt, outputs three masks (multimask tracking), the one with the highest
  predicted IoU is the frame's output and is encoded into memory from its sigmoid (with
  ``model.sam2.multimask_output_for_tracking`` off: its single mask, as the reference in
  training: no dynamic multimask);
- nothing is detached: gradients flow through memories and pointers into earlier frames.

With ``model.gradient_checkpointing`` (``<stage>.sam2.gradient_checkpointing``) the image
encoder runs one frame at a time and each frame's image features and tracking step are
recomputed in the backward pass rather than stored (the same values; less memory, about one
more forward pass of time).

Not reproduced: point and box prompts, correction clicks, several initial conditioning
frames; dropout and drop path (twoshot's SAM 2 has none: the reference's 0.1 memory-attention
dropout and 0.1 drop path draw random numbers in an order twoshot does not mirror).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from twoshot.model.sam2.network import NO_OBJECT_SCORE, Sam2, Sam2Features
from twoshot.model.sam2.sizes import MAX_OBJECT_POINTERS, NUM_MASKMEM


@dataclass
class FrameOutput:
    """One frame's predictions for the flattened objects (N of them).

    multimasks: mask logits at the input size [N, M, S, S] (M = 3 tracked, 1 given or
    tracked with single-mask tracking);
    ious: predicted IoUs [N, M]; scores: object score logits [N, 1]; chosen: the output mask
    logits [N, 1, S, S]; pointer: object pointers [N, 256]; memory / memory_pos: the encoded
    memory [N, 64, h, w] and its position encoding.
    """

    multimasks: torch.Tensor
    ious: torch.Tensor
    scores: torch.Tensor
    chosen: torch.Tensor
    pointer: torch.Tensor
    memory: torch.Tensor
    memory_pos: torch.Tensor


def _resized_inputs(
    model: Sam2, rgb: torch.Tensor, first_masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [B*T, 3, S, S] and first masks [B, K, S, S] at the model's input size S
    (bilinear antialiased frames; masks resized the same way and thresholded at 0.5)."""
    size = model.image_size
    frames = rgb.flatten(0, 1)
    masks = first_masks
    if frames.shape[-2:] != (size, size):
        frames = F.interpolate(
            frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        masks = F.interpolate(
            first_masks.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        masks = (masks >= 0.5).to(first_masks.dtype)
    return frames, masks


def _given_frame(model: Sam2, features: Sam2Features, mask: torch.Tensor) -> FrameOutput:
    """A conditioning frame: binary masks [N, 1, S, S] as the output."""
    output = model.mask_as_output(features.features, features.high_res, mask)
    memory, memory_pos = model.encode_memory(features.features, output.high_res, output.object_score, False)
    ious = torch.ones(mask.size(0), 1, dtype=output.high_res.dtype, device=mask.device)
    return FrameOutput(
        output.high_res, ious, output.object_score, output.high_res, output.obj_ptr, memory, memory_pos
    )


def _tracked_frame(
    model: Sam2, features: Sam2Features, history: dict[int, FrameOutput], frame: int, num_frames: int
) -> FrameOutput:
    """Frame ``frame`` (> 0) of every object from the memory of frames ``history`` (0 the
    conditioning frame), as the reference's training ``track_step`` without prompts."""
    n = features.features.size(0)
    tokens, token_pos = [], []
    spatial = [(0, history[0])]
    for t_pos in range(1, NUM_MASKMEM):
        previous = frame - (NUM_MASKMEM - t_pos)
        if previous >= 1 and previous in history:
            spatial.append((t_pos, history[previous]))
    for t_pos, past in spatial:
        tokens.append(past.memory.flatten(2).permute(2, 0, 1))
        pos = past.memory_pos.flatten(2).permute(2, 0, 1)
        token_pos.append(pos + model.maskmem_tpos_enc[NUM_MASKMEM - t_pos - 1])
    readable = min(num_frames, MAX_OBJECT_POINTERS)
    pointers = [(frame, history[0].pointer)]
    for distance in range(1, readable):
        previous = frame - distance
        if previous < 0:
            break
        if previous >= 1:
            pointers.append((distance, history[previous].pointer))
    stacked, pointer_pos = model.pointer_tokens(pointers, readable, n)
    tokens.append(stacked)
    token_pos.append(pointer_pos)
    conditioned = model.attend_memory(
        features.features, features.positions, torch.cat(tokens), torch.cat(token_pos), stacked.shape[0]
    )
    return _tracking_heads(model, conditioned, features)


def _tracking_heads(model: Sam2, image: torch.Tensor, features: Sam2Features) -> FrameOutput:
    """SAM's heads without a prompt: three masks, the best predicted IoU chosen, or with
    ``multimask_output_for_tracking`` off the single mask (the reference's training path: no
    dynamic multimask); then the frame's memory."""
    n = image.size(0)
    points = (
        torch.zeros(n, 1, 2, device=image.device),
        -torch.ones(n, 1, dtype=torch.int32, device=image.device),
    )
    prompts = model.sam_prompt_encoder
    sparse, dense = prompts(points, None)
    masks, ious, tokens, scores = model.sam_mask_decoder(
        image,
        prompts.dense_positions(),
        sparse,
        dense,
        model.use_multimask(initial=False, num_points=0),
        features.high_res,
        dynamic=False,
    )
    visible = scores > 0
    masks = torch.where(visible[:, None, None], masks, NO_OBJECT_SCORE).float()
    size = model.image_size
    high = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)
    best = torch.argmax(ious, dim=-1)
    rows = torch.arange(n, device=image.device)
    chosen = high[rows, best].unsqueeze(1)
    pointer = model.obj_ptr_proj(tokens[rows, best])
    weight = visible.float()
    pointer = weight * pointer
    pointer = pointer + (1 - weight) * model.no_obj_ptr
    memory, memory_pos = model.encode_memory(features.features, chosen, scores, False)
    return FrameOutput(high, ious, scores, chosen, pointer, memory, memory_pos)


def track_objects(
    model: Sam2, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
) -> tuple[list[FrameOutput], list[tuple[int, int]]]:
    """Every frame's :class:`FrameOutput` of the clip's selected objects.

    rgb [B, T, 3, H, W] normalised frames; first_masks [B, K, H, W] frame 0's masks;
    selector [B, K] (1 = the slot holds an object). Frames are resized to the model's input
    size S when H, W differ. Returns the T frame outputs and the (clip, slot) of each of
    their N rows.
    """
    b, t = rgb.shape[:2]
    frames, masks = _resized_inputs(model, rgb, first_masks)
    recompute = model.gradient_checkpointing and torch.is_grad_enabled()
    if recompute:
        # One frame at a time: only one frame's image-encoder activations live at once.
        per_frame = [checkpoint(model.encode_image, frame[None], use_reentrant=False) for frame in frames]
        features = Sam2Features(
            [torch.cat([f.high_res[i] for f in per_frame]) for i in range(len(per_frame[0].high_res))],
            torch.cat([f.features for f in per_frame]),
            torch.cat([f.positions for f in per_frame]),
        )
    else:
        features = model.encode_image(frames)
    objects = [(i, k) for i in range(b) for k in range(selector.size(1)) if bool(selector[i, k] > 0.5)]
    clips = torch.tensor([i for i, _ in objects], device=rgb.device)
    slots = torch.tensor([k for _, k in objects], device=rgb.device)
    history: dict[int, FrameOutput] = {}
    outputs = []
    for frame in range(t):
        current = features.index(clips * t + frame)
        if frame == 0:
            out = _given_frame(model, current, masks[clips, slots].unsqueeze(1))
        elif recompute:
            out = checkpoint(_tracked_frame, model, current, history, frame, t, use_reentrant=False)
        else:
            out = _tracked_frame(model, current, history, frame, t)
        history[frame] = out
        outputs.append(out)
    return outputs, objects


def _scatter(values: torch.Tensor, objects: list[tuple[int, int]], b: int, k: int) -> torch.Tensor:
    """Rows [N, ...] of ``objects`` into [B, K, ...] (zeros in empty slots)."""
    out = values.new_zeros((b, k, *values.shape[1:]))
    for row, (i, slot) in enumerate(objects):
        out[i, slot] = values[row]
    return out


def training_forward(
    model: Sam2, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The training forward of a batch of clips (see the module docstring).

    rgb [B, T, 3, H, W]; first_masks [B, K, H, W]; selector [B, K]. Returns (logits, probs,
    aux): logits / probs [B, T-1, K+1, H, W] of frames 1..T-1 (objects combined as SAM 2's
    evaluation combines them, :func:`twoshot.model.sam2.propagator.probabilities`; logits are
    the log of the probabilities); aux at the input size S: ``masks`` [B, T, K, 3, S, S]
    (frame 0, and every frame with single-mask tracking: its one mask in all three),
    ``ious`` [B, T, K, 3], ``scores`` [B, T, K, 1]; empty slots are zero.
    """
    from twoshot.model.sam2.propagator import probabilities

    b, t, _, h, w = rgb.shape
    k = selector.size(1)
    outputs, objects = track_objects(model, rgb, first_masks, selector)
    masks = torch.stack([_scatter(o.multimasks.expand(-1, 3, -1, -1), objects, b, k) for o in outputs], 1)
    ious = torch.stack([_scatter(o.ious.expand(-1, 3), objects, b, k) for o in outputs], 1)
    scores = torch.stack([_scatter(o.scores, objects, b, k) for o in outputs], 1)
    probs = rgb.new_zeros(b, t - 1, k + 1, h, w)
    probs[:, :, 0] = 1.0
    with torch.no_grad():
        for frame, out in enumerate(outputs[1:]):
            chosen = F.interpolate(out.chosen, size=(h, w), mode="bilinear", align_corners=False)
            for i in range(b):
                rows = [r for r, (clip, _) in enumerate(objects) if clip == i]
                if not rows:
                    continue
                slots = [objects[r][1] for r in rows]
                combined = probabilities(chosen[rows, 0]).to(probs.dtype)
                probs[i, frame, 0] = combined[0]
                probs[i, frame, [s + 1 for s in slots]] = combined[1:]
    logits = torch.log(probs.clamp_min(1e-7))
    return logits, probs, {"masks": masks, "ious": ious, "scores": scores}
