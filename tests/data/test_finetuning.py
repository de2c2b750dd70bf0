"""Fine-tuning sources: class folders keep their ids whatever files each split holds."""

from PIL import Image
import pytest

from torchflava.data.finetuning import ImageClassFolder


def test_class_ids_do_not_shift_when_a_class_folder_is_empty(tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "dog", "fox"):
            (tmp_path / split / name).mkdir(parents=True)
            if not (split == "val" and name == "dog"):  # val/dog exists, without images
                Image.new("RGB", (4, 4)).save(tmp_path / split / name / "x.png")
    (tmp_path / "val" / ".hidden").mkdir()  # not a class
    train, val = ImageClassFolder(tmp_path / "train"), ImageClassFolder(tmp_path / "val")
    assert train.classes == val.classes == ["cat", "dog", "fox"]
    assert [val[i].label for i in range(len(val))] == [0, 2]  # fox keeps id 2
    with pytest.raises(ValueError, match=r"folders \['fox'\] are not among the classes"):
        ImageClassFolder(tmp_path / "val", ["cat", "dog"])
