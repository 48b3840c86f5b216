"""Model sources: a local folder, a Hugging Face Hub id, a packaged offline copy, or a tiny config.

Everything resolves to a folder that ``AutoModel*.from_pretrained`` can read (plus a GGUF file name
for the SmolLM2 package), so the rest of domainlm never needs to know where a model came from.

Loading is safe by default: weights come from safetensors or GGUF; a pickle ``.bin`` is refused
unless ``allow_pickle`` is set, and remote code runs only with ``trust_remote_code``.

The package, one idea a module (each imports only the ones above it in this list):

* :mod:`.source`: :class:`~.source.ModelSource` (what a resolved model is) and domainlm's cache folder;
* :mod:`.hub`: whether the Hugging Face Hub may be asked (``HF_HUB_OFFLINE``) and can be reached;
* :mod:`.safety`: the checks on a model folder: no pickle weights or remote code without the opt-in, and a
  config.json that fits its weights;
* :mod:`.tiny`: the tiny architectures built from a config (tests, scaling sweeps, from-scratch protein models);
* :mod:`.gguf`: a GGUF model dequantised once into a cached safetensors folder;
* :mod:`.resolution`: :func:`~.resolution.resolve`, a model argument -> a :class:`~.source.ModelSource` (local
  folder, tiny name, packaged offline copy, Hub id), and the sources available offline;
* :mod:`.load`: :func:`~.load.load_model` and :func:`~.load.load_tokenizer` (``resolve``, ``load_model`` and
  ``load_tokenizer`` are also ``domainlm.resolve``, ``domainlm.load_model``, ``domainlm.load_tokenizer``).
"""
