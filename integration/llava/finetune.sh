#!/usr/bin/env bash
# Stage 2 (full instruction tuning) as LLaVA-1.5's scripts/v1_5/finetune.sh, with an OpenVision 2 tower.
#   BACKEND=llava (default): LLaVA's own train.py; PROJECTOR = mm_projector.bin of pretrain.sh
#   BACKEND=hf:              ov2 llava-train, continuing from the HF folder written by pretrain.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LM=${LM:?set LM to a causal LM folder}
TOWER=${TOWER:?set TOWER to an OpenVision 2 folder}
DATA=${DATA:?set DATA to llava_v1_5_mix665k.json or similar}
IMAGES=${IMAGES:?set IMAGES to the image folder}
STAGE1=${STAGE1:-./checkpoints/llava-v1.5-ov2-pretrain}
OUT=${OUT:-./checkpoints/llava-v1.5-ov2}
ZERO=${ZERO:-$HERE/../deepspeed/zero3.json}

if [ "${BACKEND:-llava}" = llava ]; then
  deepspeed --module ov2_plugin.llava.original \
    --deepspeed "$ZERO" \
    --model_name_or_path "$LM" \
    --version v1 \
    --data_path "$DATA" \
    --image_folder "$IMAGES" \
    --vision_tower "ov2:$TOWER" \
    --pretrain_mm_mlp_adapter "$STAGE1/mm_projector.bin" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir "$OUT" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 16 \
    --gradient_accumulation_steps 1 \
    --save_strategy steps --save_steps 50000 --save_total_limit 1 \
    --learning_rate 2e-5 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine \
    --logging_steps 1 --tf32 True --model_max_length 2048 \
    --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True --report_to none
else
  deepspeed --module ov2_plugin.cli llava-train \
    --deepspeed "$ZERO" \
    --model_name_or_path "$STAGE1" \
    --data_path "$DATA" \
    --image_folder "$IMAGES" \
    --version chat \
    --image_aspect_ratio pad \
    --bf16 true \
    --output_dir "$OUT" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 16 \
    --learning_rate 2e-5 --weight_decay 0. --warmup_steps 0.03 --lr_scheduler_type cosine \
    --logging_steps 1 --model_max_length 2048 --gradient_checkpointing true --dataloader_num_workers 4
fi
