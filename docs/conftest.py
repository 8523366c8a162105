# pytest (tox -e docs_examples) runs the pages' examples. The example gallery is run by the
# docs build instead: its sources (../examples) and its output here (generated/, written by
# sphinx-gallery) are not collected.
collect_ignore_glob = ["generated/*", "sg_execution_times.rst"]
