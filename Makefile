# The README's two commands: `make demo` (install + the main job) and `make test`.
PY := .venv/bin/python
DEMO_CFG := configs/classification/groupmamba-tiny_demo.py
DEMO_DIR := work_dirs/groupmamba-tiny_demo

.PHONY: install demo test env

install:
	bash tools/install.sh

# Train on the bundled demo data, then evaluate the last checkpoint.
demo: install
	$(PY) tools/train.py $(DEMO_CFG) --work-dir $(DEMO_DIR)
	$(PY) tools/test.py $(DEMO_CFG) $(DEMO_DIR)/epoch_$$($(PY) -c "from mmengine import Config; print(Config.fromfile('$(DEMO_CFG)').train_cfg.max_epochs)").pth --work-dir $(DEMO_DIR)/test

test: install
	$(PY) -m pytest tests -q -p no:cacheprovider

env:
	$(PY) -m mmgroupmamba.utils.collect_env
