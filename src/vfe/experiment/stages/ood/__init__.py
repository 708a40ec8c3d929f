"""Out-of-distribution detection: can each head tell the test set from images it was never meant for?"""
