"""hpcsur.parallel"""
