from timm_mlit.demo import main

main()
