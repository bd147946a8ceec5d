"""Dtypes as JAX users type them: "bfloat16", jnp.bfloat16, np.float32, np.dtype(...) are accepted
wherever the library takes a dtype; anything else is the one clear ConfigError."""
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from seallm_jax import hf
from seallm_jax.errors import ConfigError, check_dtype
from seallm_jax.eval.testing import save_tiny_model
from seallm_jax.model import Qwen2Config

FORMS = {
    "float32": [("name", "float32"), ("jnp", jnp.float32), ("np_type", np.float32), ("np_dtype", np.dtype("float32")),
                ("jnp_dtype", jnp.dtype(jnp.float32))],
    "bfloat16": [("name", "bfloat16"), ("jnp", jnp.bfloat16), ("ml_dtypes", ml_dtypes.bfloat16),
                 ("np_dtype", np.dtype(ml_dtypes.bfloat16))],
    "float16": [("name", "float16"), ("jnp", jnp.float16), ("np_type", np.float16)],
}
CASES = [pytest.param(form, name, id=f"{name}-{label}") for name, forms in FORMS.items() for label, form in forms]
REJECTED = [pytest.param(form, id=repr(form))
            for form in ("float64", "fp32", np.float64, jnp.int32, np.dtype("int8"), 3, None)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("form, name", CASES)
def test_check_dtype_and_the_config_take_every_form_and_store_the_name(form, name):
    assert check_dtype(form) == name
    config = Qwen2Config(dtype=form, param_dtype=form)
    assert (config.dtype, config.param_dtype) == (name, name)
    assert config == Qwen2Config(dtype=name, param_dtype=name)


@pytest.mark.parametrize("form", REJECTED)
def test_anything_else_is_the_one_clear_error(form):
    with pytest.raises(ConfigError, match=r"dtype .*: expected one of float32, bfloat16, float16"):
        check_dtype(form, "dtype")
    with pytest.raises(ConfigError, match=r"^dtype .*: expected one of float32, bfloat16, float16"):
        Qwen2Config(dtype=form)


@pytest.mark.parametrize("form, name", [pytest.param(f, n, id=f"{n}-{label}") for n, forms in FORMS.items()
                                        if n != "float16" for label, f in forms[:2]])
def test_load_pretrained_and_load_model_take_jax_and_numpy_dtypes(model_dir, form, name):
    model = hf.load_pretrained(model_dir, dtype=form)
    assert model.config.dtype == name
    ids = jnp.asarray([[1, 2, 3]])
    logits = model(ids)
    assert logits.shape == (1, 3, model.config.vocab_size) and bool(jnp.all(jnp.isfinite(logits)))
    assert hf.load_model(model_dir, dtype=form).config.dtype == name
    assert hf.load_pretrained(model_dir, dtype=form, param_dtype=form).config.param_dtype == name


def test_load_pretrained_rejects_a_dtype_it_cannot_run(model_dir):
    with pytest.raises(ConfigError, match="dtype <class 'jax.numpy.int32'>: expected one of"):
        hf.load_pretrained(model_dir, dtype=jnp.int32)
