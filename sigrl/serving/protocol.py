"""Names of the served ``sigrl`` entry model that clients and the repository share (no torch, no Triton).

The entry model takes ``image`` (BYTES, [N, 1]: encoded images), optional ``labels`` (BYTES, [N, C]:
one identical row of label names per image) and optional ``top_k`` (INT32, [N, 1]), and answers
``scores`` (FP32, [N, C]), ``top_labels`` (BYTES, [N, K]) and ``top_scores`` (FP32, [N, K]); a repository
built with thresholds also answers ``tags`` (BYTES, [N, T]: each image's labels at or above their
thresholds, best first, rows padded with empty names). Its config publishes the default vocabulary and
the request limits as ``parameters``. See docs/serving.md.
"""

ENTRY_MODEL = "sigrl"

INPUT_IMAGE = "image"
INPUT_LABELS = "labels"
INPUT_TOP_K = "top_k"
OUTPUT_SCORES = "scores"
OUTPUT_TOP_LABELS = "top_labels"
OUTPUT_TOP_SCORES = "top_scores"
OUTPUT_TAGS = "tags"

PARAM_MAX_IMAGE_BYTES = "max_image_bytes"
PARAM_MAX_LABELS = "max_labels"
PARAM_DEFAULT_VOCABULARY = "default_vocabulary"  # JSON list of label names
