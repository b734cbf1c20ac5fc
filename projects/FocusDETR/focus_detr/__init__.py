"""Focus-DETR as a Detectron2 project: foreground token selection, cascade dual-attention encoder, DINO decoder."""
