from timm_mlit.demo import main
from timm_mlit.errors import run_command

run_command('mlit-demo', main)
