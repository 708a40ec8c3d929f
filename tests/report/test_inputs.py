"""The run stores what the report needs as JSON; images must come back bit for bit."""
import json

import numpy as np
import pytest

from vfe.report.inputs import decode_image, encode_image


@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 1), (7, 5, 3)])
def test_images_survive_json_exactly(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    back = decode_image(json.loads(json.dumps(encode_image(image))))
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, image)


def test_only_uint8_images_are_stored():
    with pytest.raises(ValueError, match="uint8"):
        encode_image(np.zeros((4, 4), dtype=np.float32))
