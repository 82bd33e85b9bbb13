module gotemplate

go 1.18
