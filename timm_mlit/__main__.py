from timm_mlit.summary import main

main()
