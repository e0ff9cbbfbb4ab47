"""Reference models built only from the library's functional API: switching the backend switches
every kernel they run.

    TransformerConfig   sizes and choices (presets: TransformerConfig.gpt2("small"), .bert("base"))
    Transformer         encoder-decoder ("Attention Is All You Need"), sinusoidal positions
    GPT                 decoder-only, learned positions, tied embeddings, generate() with a KV cache
    BERT                encoder-only with a masked-LM head and padding masks

Converters: gpt_from_hf, bert_from_hf (Hugging Face weights), load_torch_transformer.
"""

from .bert import BERT
from .config import TransformerConfig
from .convert import bert_from_hf, gpt_from_hf, load_torch_transformer
from .gpt import GPT
from .layers import KVCache
from .transformer import Transformer

__all__ = ["BERT", "GPT", "KVCache", "Transformer", "TransformerConfig", "bert_from_hf", "gpt_from_hf",
           "load_torch_transformer"]
