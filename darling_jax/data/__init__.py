"""Prompt datasets: the uniform row schema, the registry, TFDS builds and grain pipelines.

Light modules (no tfds/grain import) are re-exported here:
  Row, FieldMapping, ReadReport, read_jsonl            rows.py: schema + strict jsonl reading
  DATASETS, DatasetSpec, Task, PromptTemplate, ...     registry.py: names -> files, mapping, quality
  resolve_data_dir, resolve_cache_dir                  local_data.py: where data and builds live
Heavier ones are imported where used (the GPU image has neither tfds nor grain):
  darling_jax.data.builders   load_split(name_or_spec, split) -> RowSource   (tensorflow_datasets)
  darling_jax.data.pipeline   prompt_iterator(source, tokenizer, PipelineConfig) (grain)
"""

from darling_jax.data.local_data import resolve_cache_dir, resolve_data_dir
from darling_jax.data.registry import (
    DATASETS, MATH_TEMPLATE, PLAIN_TEMPLATE, DatasetSpec, PromptTemplate, Task, custom_dataset,
    dataset_names, get_dataset)
from darling_jax.data.rows import FieldMapping, ReadReport, Row, iter_jsonl, read_jsonl

__all__ = [
    "DATASETS", "DatasetSpec", "FieldMapping", "MATH_TEMPLATE", "PLAIN_TEMPLATE", "PromptTemplate",
    "ReadReport", "Row", "Task", "custom_dataset", "dataset_names", "get_dataset", "iter_jsonl",
    "read_jsonl", "resolve_cache_dir", "resolve_data_dir",
]
