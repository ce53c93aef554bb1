"The vlm3 DeepEval suite: `deepeval test run <this folder>/test_vlm.py ...` (see conftest.py for the options)."
from pathlib import Path
TEST_FILE = Path(__file__).parent / "test_vlm.py"  # for `deepeval test run $(python -c "import vlm3_nb.deepeval_suite as s; print(s.TEST_FILE)")`
