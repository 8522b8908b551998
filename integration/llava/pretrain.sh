#!/usr/bin/env bash
# Stage 1 (projector alignment) as LLaVA-1.5's scripts/v1_5/pretrain.sh, with an OpenVision 2 tower.
#   BACKEND=llava (default): LLaVA's own train.py, via the ov2: tower hook (every LLaVA flag works)
#   BACKEND=hf:              ov2 llava-train, a Hugging Face LlavaForConditionalGeneration
# Set LM (Vicuna/Llama folder), TOWER (ov2 pretrain/convert output), DATA (LLaVA-Pretrain json), IMAGES.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LM=${LM:?set LM to a causal LM folder, e.g. vicuna-7b-v1.5}
TOWER=${TOWER:?set TOWER to an OpenVision 2 folder}
DATA=${DATA:?set DATA to blip_laion_cc_sbu_558k.json or similar}
IMAGES=${IMAGES:?set IMAGES to the image folder}
OUT=${OUT:-./checkpoints/llava-v1.5-ov2-pretrain}
ZERO=${ZERO:-$HERE/../deepspeed/zero2.json}

if [ "${BACKEND:-llava}" = llava ]; then
  deepspeed --module ov2_plugin.llava.original \
    --deepspeed "$ZERO" \
    --model_name_or_path "$LM" \
    --version plain \
    --data_path "$DATA" \
    --image_folder "$IMAGES" \
    --vision_tower "ov2:$TOWER" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 True \
    --output_dir "$OUT" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 32 \
    --gradient_accumulation_steps 1 \
    --save_strategy steps --save_steps 24000 --save_total_limit 1 \
    --learning_rate 1e-3 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine \
    --logging_steps 1 --tf32 True --model_max_length 2048 \
    --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True --report_to none
else
  deepspeed --module ov2_plugin.cli llava-train \
    --deepspeed "$ZERO" \
    --vision_tower "$TOWER" \
    --language_model "$LM" \
    --version plain \
    --data_path "$DATA" \
    --image_folder "$IMAGES" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter true \
    --mm_vision_select_layer -2 \
    --bf16 true \
    --output_dir "$OUT" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 32 \
    --learning_rate 1e-3 --weight_decay 0. --warmup_steps 0.03 --lr_scheduler_type cosine \
    --logging_steps 1 --model_max_length 2048 --gradient_checkpointing true --dataloader_num_workers 4
fi
